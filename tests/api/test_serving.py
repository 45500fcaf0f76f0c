"""Serving many tasks at once over HTTP: mixed batches, freshness across replicas, overload, stats."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.db.session import make_session_factory
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.services.prompts import store_prompt
from tests.api.helpers import create_task

TEMPLATES = ["Review: {input}\nSentiment:", "Q: {input}\nA:"]
LABEL_SETS = [["positive", "negative"], ["yes", "no", "maybe"], ["very good", "quite bad"]]


def store_random_prompt(engine: Engine, frozen: FrozenModel, task_id: int, prompt: torch.Tensor) -> int:
    """Store a prompt version straight into the database, as a finished training job would; its id."""
    with make_session_factory(engine).begin() as session:
        stored = store_prompt(
            session,
            tenant="default",
            task_id=task_id,
            artifact=Artifact("prompt", {"prompt": prompt}),
            positions=prompt.shape[0],
            width=frozen.hidden_size,
            identity=frozen.identity,
            metrics={},
            hyperparameters={},
            job_id=None,
            dataset_id=None,
        )
        return stored.id


def add_tasks_with_random_prompts(
    client: TestClient, engine: Engine, frozen: FrozenModel, n: int, seed: int = 0
) -> dict[str, tuple[TaskSpec, torch.Tensor]]:
    """n classification tasks of varied templates, label sets and prompt lengths, each with a stored prompt."""
    generator = torch.Generator().manual_seed(seed)
    tasks: dict[str, tuple[TaskSpec, torch.Tensor]] = {}
    for i in range(n):
        name = f"task{i}"
        template, labels = TEMPLATES[i % len(TEMPLATES)], LABEL_SETS[i % len(LABEL_SETS)]
        task = create_task(client, name, template=template, labels=labels)
        prompt = torch.randn(1 + (i * 7) % 13, frozen.hidden_size, generator=generator)
        store_random_prompt(engine, frozen, task["id"], prompt)
        tasks[name] = (TaskSpec("classification", template, tuple(labels)), prompt)
    return tasks


SENTENCES = [
    "a good film",
    "the plot was bad",
    "it",
    "very nice and happy story about the movie and a film",
    "sad",
    "the the the movie",
    "awful plot",
    "great",
]


def test_concurrent_clients_of_many_tasks_get_the_answers_they_would_get_alone(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    tasks = add_tasks_with_random_prompts(client, db_engine, frozen, 24)
    rng = random.Random(0)
    requests = [(rng.choice(list(tasks)), rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(96)]

    def call(request: tuple[str, list[str]]) -> list[dict[str, object]]:
        response = client.post("/v1/infer", json={"task": request[0], "inputs": request[1]})
        assert response.status_code == 200, response.text
        return response.json()["outputs"]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, requests))
    for (name, inputs), outputs in zip(requests, answers, strict=True):
        spec, prompt = tasks[name]
        for expected, got in zip(classify(frozen, prompt, spec, inputs), outputs, strict=True):
            assert got["scores"].keys() == expected.keys()  # type: ignore[attr-defined]
            assert max(abs(got["scores"][k] - v) for k, v in expected.items()) < 1e-4  # type: ignore[index]
    stats = client.get("/v1/stats").json()["engine"]
    assert stats["rows"] == sum(len(inputs) for _, inputs in requests)
    assert stats["max_batch_rows"] > 3  # requests of different tasks really shared forward passes
    assert stats["pool"]["misses"] == len({name for name, _ in requests})


def test_hundreds_of_tasks_over_a_small_pool_answer_correctly_with_bounded_memory(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(pool_capacity=16)
    tasks = add_tasks_with_random_prompts(client, db_engine, frozen, 200, seed=1)
    rng = random.Random(1)
    requests = [(name, [rng.choice(SENTENCES)]) for name in tasks] + [
        (rng.choice(list(tasks)), [rng.choice(SENTENCES)]) for _ in range(100)
    ]
    rng.shuffle(requests)
    seen_entries: list[int] = []

    def call(request: tuple[str, list[str]]) -> dict[str, float]:
        response = client.post("/v1/infer", json={"task": request[0], "inputs": request[1]})
        assert response.status_code == 200, response.text
        seen_entries.append(client.get("/v1/stats").json()["engine"]["pool"]["entries"])
        return response.json()["outputs"][0]["scores"]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, requests))
    for (name, inputs), scores in zip(requests, answers, strict=True):
        spec, prompt = tasks[name]
        expected = classify(frozen, prompt, spec, inputs)[0]
        assert max(abs(scores[k] - v) for k, v in expected.items()) < 1e-4
    pool = client.get("/v1/stats").json()["engine"]["pool"]
    assert max(seen_entries) <= 16 and pool["entries"] <= 16
    assert pool["misses"] >= 200 and pool["evictions"] >= 200 - 16


def test_pool_evicts_least_recently_used_prompts_and_still_answers(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(pool_capacity=2)
    tasks = add_tasks_with_random_prompts(client, db_engine, frozen, 3)
    for name in ["task0", "task1", "task2", "task0"]:
        outputs = client.post("/v1/infer", json={"task": name, "inputs": ["good"]}).json()["outputs"]
        spec, prompt = tasks[name]
        expected = classify(frozen, prompt, spec, ["good"])[0]
        assert max(abs(outputs[0]["scores"][k] - v) for k, v in expected.items()) < 1e-4
    pool = client.get("/v1/stats").json()["engine"]["pool"]
    assert pool["entries"] == 2 and pool["misses"] == 4 and pool["evictions"] == 2


def test_a_new_active_version_is_served_by_the_next_request_on_every_replica(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    replica_a = client_with()
    replica_b = client_with()  # a second API process on the same database
    add_tasks_with_random_prompts(replica_a, db_engine, frozen, 1)
    first = replica_a.post("/v1/infer", json={"task": "task0", "inputs": ["good"]}).json()
    # replica B stores a new version (as a finished training job would) ...
    newer = torch.randn(5, frozen.hidden_size)
    task_id = replica_b.get("/v1/tasks/task0").json()["id"]
    second_id = store_random_prompt(db_engine, frozen, task_id, newer)
    # ... and replica A, which has the old version cached, serves the new one at once
    again = replica_a.post("/v1/infer", json={"task": "task0", "inputs": ["good"]}).json()
    assert again["prompt_id"] == second_id != first["prompt_id"]
    # a prompt deleted through replica B is never served by replica A again
    assert replica_b.delete(f"/v1/prompts/{second_id}").status_code == 204
    after = replica_a.post("/v1/infer", json={"task": "task0", "inputs": ["good"]}).json()
    assert after["prompt_id"] == first["prompt_id"]


def test_overload_answers_503_with_retry_after(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(max_queue_rows=2)
    add_tasks_with_random_prompts(client, db_engine, frozen, 1)
    response = client.post("/v1/infer", json={"task": "task0", "inputs": ["a", "b", "c"]})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded" and response.headers["retry-after"]
    assert client.post("/v1/infer", json={"task": "task0", "inputs": ["a", "b"]}).status_code == 200
    assert client.get("/v1/stats").json()["engine"]["rejected_requests"] == 1


def test_out_of_range_priority_and_timeout_are_refused(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    add_tasks_with_random_prompts(client, db_engine, frozen, 1)
    for extra in ({"priority": 1000}, {"timeout_ms": 0}):
        response = client.post("/v1/infer", json={"task": "task0", "inputs": ["a"], **extra})
        assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"

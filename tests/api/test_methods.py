"""Every prompt method through the API: trained with only "method" changed, listed with its shapes, served."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.db.models import Prompt
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments
from tests.api.helpers import create_dataset, create_task, start_job, toy_examples, wait_for_job

SPEC = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
INPUTS = ["a good film", "the plot was bad", "it"]
QUICK = {"num_virtual_tokens": 2, "steps": 3, "eval_every": 3}

# The tiny GPT-2: hidden 64, 2 layers, 2 heads of 32. Shapes of what each method stores for QUICK with its
# defaults (around: 4 vectors after the input; input_mapping: rank 8; input_dependent: a 64-wide generator),
# and the positions its prompt adds to every row.
STORED: dict[str, tuple[dict[str, list[int]], int]] = {
    "prompt": ({"prompt": [2, 64]}, 2),
    "prefix": ({"keys": [2, 2, 2, 32], "values": [2, 2, 2, 32]}, 2),
    "deep_overwrite": ({"prompt": [2, 64], "states": [1, 2, 64]}, 2),
    "around": ({"before": [2, 64], "after": [4, 64]}, 2 + 4),
    "input_mapping": ({"prompt": [2, 64], "down": [64, 8], "up": [8, 64]}, 2),
    "input_dependent": ({"w1": [64, 64], "b1": [64], "w2": [64, 2 * 64], "b2": [2, 64]}, 2),
}


def _train(client: TestClient, task: str, dataset_id: int, **hyper: Any) -> dict[str, Any]:
    job = wait_for_job(client, start_job(client, task, dataset_id, **{**QUICK, **hyper})["id"])
    assert job["status"] == "succeeded", job
    return job


def _stored_artifact(engine: Engine, prompt_id: int) -> Artifact:
    with Session(engine) as session:
        return Artifact.from_bytes(session.scalars(select(Prompt.tensors).where(Prompt.id == prompt_id)).one())


def _assert_served_as_alone(frozen: FrozenModel, artifact: Artifact, inputs: list[str], outputs: list[Any]) -> None:
    """Served outputs equal the stored artifact's answers computed on its own, up to float rounding."""
    expected = classify(frozen, load_segments(frozen, artifact), SPEC, inputs)
    assert len(outputs) == len(expected)
    for output, alone in zip(outputs, expected, strict=True):
        assert output["scores"].keys() == alone.keys()
        assert max(abs(output["scores"][label] - p) for label, p in alone.items()) < 1e-4
        assert output["label"] == max(output["scores"], key=output["scores"].get)


@pytest.mark.parametrize("method", sorted(STORED))
def test_each_method_trains_is_listed_with_its_shapes_and_is_served_by_task_id(
    client: TestClient, db_engine: Engine, frozen: FrozenModel, method: str
) -> None:
    task = create_task(client, "sentiment")
    job = _train(client, "sentiment", create_dataset(client, toy_examples(16))["id"], method=method)
    assert job["hyperparameters"]["method"] == method

    (listed,) = client.get("/v1/prompts", params={"task": "sentiment"}).json()
    shapes, positions = STORED[method]
    assert listed["id"] == job["result_prompt_id"] and listed["active"]
    assert listed["method"] == method and listed["hyperparameters"]["method"] == method
    assert listed["shapes"] == shapes and listed["num_virtual_tokens"] == positions
    assert listed["metrics"]["trainable_parameters"] > 0
    assert client.get("/v1/tasks/sentiment").json()["status"] == "ready"

    response = client.post("/v1/infer", json={"task": task["id"], "inputs": INPUTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "sentiment" and body["prompt_id"] == listed["id"]
    artifact = _stored_artifact(db_engine, listed["id"])
    assert artifact.method == method and artifact.shapes == shapes
    _assert_served_as_alone(frozen, artifact, INPUTS, body["outputs"])


def test_input_mapping_without_prompt_vectors_trains_and_serves(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(16))
    job = _train(client, "sentiment", dataset["id"], method="input_mapping", num_virtual_tokens=0)
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["num_virtual_tokens"] == 0 and prompt["shapes"]["prompt"] == [0, 64]
    response = client.post("/v1/infer", json={"task": "sentiment", "inputs": INPUTS})
    assert response.status_code == 200, response.text
    assert [set(o["scores"]) for o in response.json()["outputs"]] == [{"positive", "negative"}] * len(INPUTS)


def test_tasks_of_all_methods_served_together_answer_as_they_would_alone(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    # A round starts after 300 ms without a new request, so concurrent requests of different tasks meet in one.
    client = client_with(batch_wait_ms=300)
    dataset = create_dataset(client, toy_examples(16))
    queued = {}
    for method in STORED:
        create_task(client, method)
        queued[method] = start_job(client, method, dataset["id"], method=method, **QUICK)["id"]
    artifacts = {}
    for method, job_id in queued.items():
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded", job
        artifacts[method] = _stored_artifact(db_engine, job["result_prompt_id"])
    requests = [(method, [text]) for text in INPUTS for method in STORED] * 2

    def call(request: tuple[str, list[str]]) -> list[Any]:
        response = client.post("/v1/infer", json={"task": request[0], "inputs": request[1]})
        assert response.status_code == 200, response.text
        return response.json()["outputs"]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(call, requests))
    for (method, inputs), outputs in zip(requests, answers, strict=True):
        _assert_served_as_alone(frozen, artifacts[method], inputs, outputs)
    stats = client.get("/v1/stats").json()["engine"]
    assert stats["rows"] == len(requests) and stats["pool"]["misses"] == len(STORED)
    # Each task has len(requests) / 6 rows: a larger batch held rows of different methods in one pass.
    assert stats["max_batch_rows"] > len(requests) // len(STORED)


@pytest.mark.parametrize("method", sorted(STORED))
def test_a_job_started_from_a_stored_prompt_of_its_method_begins_where_that_prompt_ended(
    client: TestClient, method: str
) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(16))
    first = _train(client, "sentiment", dataset["id"], method=method)
    # Same data and seed, so the same validation split: the second job's first evaluation scores the stored prompt.
    second = _train(client, "sentiment", dataset["id"], method=method, init={"from_prompt": first["result_prompt_id"]})
    assert second["hyperparameters"]["init"] == {"from_prompt": first["result_prompt_id"]}
    started, ended = (client.get(f"/v1/prompts/{job['result_prompt_id']}").json() for job in (second, first))
    assert started["metrics"]["init_val_loss"] == pytest.approx(ended["metrics"]["best_val_loss"], rel=1e-5)
    assert started["shapes"] == ended["shapes"] and started["version"] == 2


def _post_job(client: TestClient, dataset_id: int, **body: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": dataset_id, **body})
    return response.status_code, response.json()


def test_unknown_method_and_out_of_range_layers_are_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(8))
    status, body = _post_job(client, dataset["id"], hyperparameters={"method": "lora", **QUICK})
    assert status == 422 and body["error"]["code"] == "validation_error", body
    assert "hyperparameters" in body["error"]["message"] and "prefix" in body["error"]["message"]
    # a field of another method is refused too
    status, body = _post_job(client, dataset["id"], hyperparameters={"method": "prompt", "rank": 4})
    assert status == 422 and body["error"]["code"] == "validation_error", body

    for layers in ([0, 2], [-1]):
        status, body = _post_job(client, dataset["id"], hyperparameters={"method": "deep_overwrite", "layers": layers})
        assert status == 422 and body["error"]["code"] == "invalid_hyperparameters", body
        assert "0..1" in body["error"]["message"]
    assert client.get("/v1/jobs").json() == []


def test_init_prompt_of_another_method_shape_or_no_prompt_at_all_is_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(16))
    stored = _train(client, "sentiment", dataset["id"], method="prompt")["result_prompt_id"]
    refused = {  # the hyperparameters, and what the message names
        "another method": ({**QUICK, "method": "deep_overwrite", "init": {"from_prompt": stored}}, "'prompt' prompt"),
        "another shape": ({**QUICK, "num_virtual_tokens": 3, "init": {"from_prompt": stored}}, "[2, 64]"),
        "no such prompt": ({**QUICK, "init": {"from_prompt": 424242}}, "does not exist"),
    }
    for case, (hyper, named) in refused.items():
        status, body = _post_job(client, dataset["id"], hyperparameters=hyper)
        assert status == 422 and body["error"]["code"] == "init_prompt_invalid", (case, body)
        assert named in body["error"]["message"], (case, body)
    assert len(client.get("/v1/jobs").json()) == 1  # only the job that stored the prompt


def test_search_options_only_go_with_a_length_search(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(8))
    status, body = _post_job(client, dataset["id"], type="train", hyperparameters=QUICK, search={"lengths": [1, 3]})
    assert status == 422 and body["error"]["code"] == "validation_error", body
    assert "search" in body["error"]["message"]
    for search in ({"lengths": []}, {"lengths": [0, 3]}, {"tolerance": 2}):
        status, body = _post_job(client, dataset["id"], type="length_search", hyperparameters=QUICK, search=search)
        assert status == 422 and body["error"]["code"] == "validation_error", (search, body)
    assert client.get("/v1/jobs").json() == []

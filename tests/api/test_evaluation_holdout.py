"""The evaluation holdout: a task's first job on a large enough dataset holds a seeded fifth of it out as the task's
evaluation set, which the gate then scores every version on, and no job of the task on that dataset trains on it."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.db.models import Job
from app.db.repositories import scope_session
from app.engine.core.model import FrozenModel
from app.engine.methods import parse_config
from app.services.holdout import held_out_rows
from tests.api.helpers import create_dataset, create_task, toy_examples, wait_for_job
from tests.api.test_keys import ADMIN_KEY, as_key, new_key
from workers.inputs import load_inputs, read_source

QUICK = {"steps": 2, "eval_every": 2, "num_virtual_tokens": 2}


def _queue(client: TestClient, dataset_id: int, task: str = "sentiment") -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"task": task, "dataset_id": dataset_id, "hyperparameters": QUICK})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def _finished(client: TestClient, job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The succeeded job and the metrics of the version it stored."""
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done
    return done, client.get(f"/v1/prompts/{done['result_prompt_id']}").json()["metrics"]


def _kinds(client: TestClient, job_id: int) -> list[str]:
    return [event["kind"] for event in client.get(f"/v1/jobs/{job_id}/events").json()]


def test_the_first_job_holds_a_fifth_out_and_no_job_on_the_dataset_trains_on_it(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    create_task(client, "sentiment")
    examples = toy_examples(150)
    source = create_dataset(client, examples)
    first = _queue(client, source["id"])
    held = first["evaluation_holdout"]
    assert held["created"] and held["excluded"] == 30 and held["reason"] is None
    evaluation_id = held["evaluation_dataset_id"]
    assert client.get("/v1/tasks/sentiment").json()["evaluation_dataset_id"] == evaluation_id
    shown = client.get(f"/v1/datasets/{evaluation_id}").json()
    assert shown["name"] == "sentiment-evaluation" and shown["num_examples"] == 30
    assert shown["source_dataset_id"] == source["id"] and len(shown["source_rows"]) == 30
    rows = shown["source_rows"]
    assert shown["preview"] == [examples[row] for row in rows[: len(shown["preview"])]]
    assert Counter(examples[row]["output"] for row in rows) == {"positive": 15, "negative": 15}  # stratified
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [source["id"], evaluation_id]
    assert "evaluation_holdout" in _kinds(client, first["id"])

    # what the worker reads for the job: the dataset without the held-out rows, in training and validation alike
    with Session(db_engine) as session:
        job = scope_session(session, "default").get(Job, first["id"])
        assert job is not None
        inputs = load_inputs(session, job, parse_config(job.hyperparameters), frozen)
    assert len(inputs.train) == 120
    assert {text for text, _ in inputs.train}.isdisjoint(examples[row]["input"] for row in rows)

    done, metrics = _finished(client, first)
    assert metrics["train_size"] + metrics["val_size"] == 120
    scored = client.get("/v1/tasks/sentiment/evaluations").json()["data"]
    assert [(r["prompt_id"], r["dataset_id"], r["metrics"]["examples"]) for r in scored] == [
        (done["result_prompt_id"], evaluation_id, 30)
    ]

    # a second job on the same dataset reuses the set and still trains without its rows
    second = _queue(client, source["id"])
    assert second["evaluation_holdout"] == {
        "evaluation_dataset_id": evaluation_id,
        "excluded": 30,
        "created": False,
        "reason": None,
    }
    again, metrics = _finished(client, second)
    assert metrics["train_size"] + metrics["val_size"] == 120
    assert len(client.get("/v1/datasets").json()) == 2
    scored = client.get("/v1/tasks/sentiment/evaluations").json()["data"]
    assert [r["prompt_id"] for r in scored] == [done["result_prompt_id"], again["result_prompt_id"]]

    # a set the user gives replaces the held-out one: the rows are the training set's again
    other = create_dataset(client, toy_examples(12, seed=5), name="mine")
    assert client.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": other["id"]}).status_code == 200
    third = _queue(client, source["id"])
    assert third["evaluation_holdout"]["evaluation_dataset_id"] == other["id"]
    assert third["evaluation_holdout"]["excluded"] == 0
    _, metrics = _finished(client, third)
    assert metrics["train_size"] + metrics["val_size"] == 150


def test_a_small_dataset_gets_no_holdout_and_the_job_says_why(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(24))
    job = _queue(client, dataset["id"])
    held = job["evaluation_holdout"]
    assert held["evaluation_dataset_id"] is None and held["excluded"] == 0 and not held["created"]
    assert "24 examples" in held["reason"] and "100" in held["reason"]
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    said = next(e for e in events if e["kind"] == "evaluation_holdout")
    assert "no evaluation set held out" in said["message"] and "evaluation_dataset_id" in said["message"]
    assert said["data"]["reason"] and "warning" not in [e["kind"] for e in events]
    _, metrics = _finished(client, job)
    assert metrics["train_size"] + metrics["val_size"] == 24
    assert client.get("/v1/tasks/sentiment").json()["evaluation_dataset_id"] is None
    assert len(client.get("/v1/datasets").json()) == 1


def test_the_holdout_can_be_turned_off_and_never_flatters_versions_trained_on_everything(client: TestClient) -> None:
    created = create_task(client, "sentiment", evaluation_holdout=False)
    assert created["evaluation_holdout"] is False
    dataset = create_dataset(client, toy_examples(150))
    job = _queue(client, dataset["id"])
    assert job["evaluation_holdout"]["reason"] == "the task's evaluation_holdout is off"
    assert "evaluation_holdout" not in _kinds(client, job["id"])  # the user asked for it
    done, metrics = _finished(client, job)
    assert metrics["train_size"] + metrics["val_size"] == 150

    # turned on again: version 1 trained on all of the dataset, so no set is held out of it now
    patched = client.patch("/v1/tasks/sentiment", json={"evaluation_holdout": True})
    assert patched.status_code == 200 and patched.json()["evaluation_holdout"] is True
    refused = _queue(client, dataset["id"])
    reason = refused["evaluation_holdout"]["reason"]
    assert refused["evaluation_holdout"]["evaluation_dataset_id"] is None
    assert f"version {done['result_prompt_id']}" in reason and "flatter" in reason
    _finished(client, refused)

    # a fresh dataset is held out of; clearing the evaluation set turns the holdout off with it
    fresh = create_dataset(client, toy_examples(100, seed=9), name="fresh")
    held = _queue(client, fresh["id"])
    assert held["evaluation_holdout"]["created"] and held["evaluation_holdout"]["excluded"] == 20
    _finished(client, held)
    cleared = client.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": None}).json()
    assert cleared["evaluation_dataset_id"] is None and cleared["evaluation_holdout"] is False
    later = _queue(client, fresh["id"])
    assert later["evaluation_holdout"]["excluded"] == 0
    assert later["evaluation_holdout"]["reason"] == "the task's evaluation_holdout is off"
    _, metrics = _finished(client, later)
    assert metrics["train_size"] + metrics["val_size"] == 100


def test_the_set_is_the_tenants_own_and_the_storage_quota_counts_it(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY, run_worker=False)
    admin = as_key(client, ADMIN_KEY)
    examples = toy_examples(150)
    size = len(json.dumps(examples, ensure_ascii=False).encode())
    tight = as_key(client, new_key(admin, "tight", ["read", "train"], limits={"stored_bytes": size + 100}))
    roomy = as_key(client, new_key(admin, "roomy", ["read", "train"]))
    for user in (tight, roomy):
        create_task(user, "sentiment")
    jobs = {}
    for name, user in (("tight", tight), ("roomy", roomy)):
        dataset = create_dataset(user, examples)
        jobs[name] = _queue(user, dataset["id"])["evaluation_holdout"]
    assert jobs["tight"]["evaluation_dataset_id"] is None and "storage quota" in jobs["tight"]["reason"]
    assert len(tight.get("/v1/datasets").json()) == 1
    evaluation_id = jobs["roomy"]["evaluation_dataset_id"]
    assert evaluation_id is not None and len(roomy.get("/v1/datasets").json()) == 2
    assert tight.get(f"/v1/datasets/{evaluation_id}").status_code == 404


def test_two_jobs_queued_at_once_hold_out_one_set(client_with: Callable[..., TestClient]) -> None:
    client = client_with(run_worker=False)  # the jobs stay queued: only enqueue races
    dataset = create_dataset(client, toy_examples(100))
    for round_ in range(4):
        create_task(client, f"task{round_}")
        start, answers = threading.Barrier(2), []

        def post(name: str = f"task{round_}", start: threading.Barrier = start, answers: list[Any] = answers) -> None:
            start.wait()
            answers.append(client.post("/v1/jobs", json={"task": name, "dataset_id": dataset["id"]}))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [answer.status_code for answer in answers] == [202, 202], [answer.text for answer in answers]
        held = sorted((a.json()["evaluation_holdout"] for a in answers), key=lambda h: not h["created"])
        assert [h["created"] for h in held] == [True, False]
        assert held[0]["evaluation_dataset_id"] == held[1]["evaluation_dataset_id"] is not None
        assert held[0]["excluded"] == held[1]["excluded"] == 20
    names = [d["name"] for d in client.get("/v1/datasets").json()]
    assert names == ["toy", *(f"task{n}-evaluation" for n in range(4))]


def test_a_meta_initialisation_never_reads_a_tasks_held_out_rows(
    client_with: Callable[..., TestClient], db_engine: Engine
) -> None:
    client = client_with(run_worker=False)
    task = create_task(client, "sentiment")
    examples = toy_examples(100)
    dataset = create_dataset(client, examples)
    held = _queue(client, dataset["id"])["evaluation_holdout"]
    rows = client.get(f"/v1/datasets/{held['evaluation_dataset_id']}").json()["source_rows"]
    with Session(db_engine) as session:
        source = read_source(scope_session(session, "default"), task["id"], "sentiment", dataset["id"])
    assert len(source.examples) == 80
    assert {text for text, _ in source.examples}.isdisjoint(examples[row]["input"] for row in rows)


def test_the_choice_is_seeded_keeps_label_shares_and_repeated_inputs_together() -> None:
    examples = [{"input": f"text {i % 40}", "output": "a" if i % 4 else "b"} for i in range(160)]
    rows = held_out_rows(examples, 32, seed=3, stratify=True)
    assert rows == held_out_rows(examples, 32, seed=3, stratify=True) != held_out_rows(examples, 32, 4, stratify=True)
    assert len(rows) == 32  # 8 inputs of 4 copies each
    chosen = {examples[row]["input"] for row in rows}
    assert all((examples[i]["input"] in chosen) == (i in rows) for i in range(160))
    assert Counter(examples[row]["output"] for row in rows) == {"a": 24, "b": 8}

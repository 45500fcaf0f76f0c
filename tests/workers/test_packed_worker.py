"""A worker trains a burst of queued train jobs packed (workers/main.Worker.claim_batch and run_jobs): each job ends
as it would alone, with its own events, and one job's cancel or loss never disturbs the others."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.db.session import make_session_factory
from app.engine.core.model import FrozenModel
from tests.api.helpers import create_dataset, create_task, start_job, toy_examples, wait_for_step
from workers.main import Worker, WorkerSettings

INPUTS = ["a good film", "a bad film", "the plot was dull", "what a great cast"]


def _worker(db_engine: Engine, frozen: FrozenModel, pack: int) -> Worker:
    settings = WorkerSettings(poll_seconds=0.05, heartbeat_seconds=0.2, heartbeat_timeout_seconds=30, pack_jobs=pack)
    return Worker(make_session_factory(db_engine), lambda: frozen, settings)


def _scores(client: TestClient, task: str) -> list[dict[str, float]]:
    response = client.post("/v1/infer", json={"task": task, "inputs": INPUTS})
    assert response.status_code == 200, response.text
    return [output["scores"] for output in response.json()["outputs"]]


def _kinds(client: TestClient, job_id: int) -> list[str]:
    return [event["kind"] for event in client.get(f"/v1/jobs/{job_id}/events").json()]


def _in_thread(worker: Worker, job_ids: list[int]) -> threading.Thread:
    thread = threading.Thread(target=worker.run_jobs, args=(job_ids,))
    thread.start()
    return thread


HYPER: list[dict[str, Any]] = [
    {"method": "prompt", "seed": 1},
    {"method": "prefix", "seed": 2},
    {"method": "prompt", "num_virtual_tokens": 6, "seed": 3, "batch_size": 4},
]


def test_a_burst_of_train_jobs_trains_packed_and_each_equals_its_job_trained_alone(
    client_with,  # type: ignore[no-untyped-def]
    db_engine: Engine,
    frozen: FrozenModel,
) -> None:
    client = client_with(run_worker=False)
    jobs, other = [], None
    for number, hyper in enumerate(HYPER):
        create_task(client, f"packed{number}")
        dataset = create_dataset(client, toy_examples(24, seed=number))
        jobs.append(start_job(client, f"packed{number}", dataset["id"], steps=6, eval_every=3, **hyper))
        if number == 0:  # a job of another kind queued between them is not packed: only train jobs are
            body = {"type": "length_search", "task": "packed0", "dataset_id": dataset["id"], "search": {"lengths": [1]}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            other = response.json()["id"]
    worker = _worker(db_engine, frozen, pack=8)
    claimed = worker.claim_batch()
    assert claimed == [job["id"] for job in jobs]
    worker.run_jobs(claimed)
    assert worker.claim_batch() == [other]  # next, alone
    for job in jobs:
        finished = client.get(f"/v1/jobs/{job['id']}").json()
        assert finished["status"] == "succeeded", finished
        assert "packed" in _kinds(client, job["id"])
        prompt = client.get(f"/v1/prompts/{finished['result_prompt_id']}").json()
        assert prompt["metrics"]["packed_with"] == len(jobs) - 1
    # The same jobs again, one at a time: the same prompts, up to float rounding.
    alone_jobs = []
    for number, hyper in enumerate(HYPER):
        create_task(client, f"alone{number}")
        dataset = create_dataset(client, toy_examples(24, seed=number), name=f"again{number}")
        alone_jobs.append(start_job(client, f"alone{number}", dataset["id"], steps=6, eval_every=3, **hyper))
    single = _worker(db_engine, frozen, pack=1)
    for job in alone_jobs:
        assert single.claim_batch() == [job["id"]]
        single.run_jobs([job["id"]])
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
        assert "packed" not in _kinds(client, job["id"])
    for number in range(len(HYPER)):
        packed, alone = _scores(client, f"packed{number}"), _scores(client, f"alone{number}")
        for got, expected in zip(packed, alone, strict=True):
            assert got == pytest.approx(expected, abs=2e-3)
    # Trained, the prompts differ from one another: the comparison above can tell jobs apart.
    assert _scores(client, "packed0") != pytest.approx(_scores(client, "packed1"), abs=2e-3)


def test_a_cancelled_job_and_a_lost_job_end_alone_while_the_rest_of_the_pack_finishes(
    client_with,  # type: ignore[no-untyped-def]
    db_engine: Engine,
    frozen: FrozenModel,
) -> None:
    client = client_with(run_worker=False)
    jobs = []
    for name in ("keep", "cancel", "drop"):
        create_task(client, name)
        dataset = create_dataset(client, toy_examples(24), name=name)
        jobs.append(start_job(client, name, dataset["id"], steps=40, eval_every=20))
    keep, cancel, drop = jobs
    worker = _worker(db_engine, frozen, pack=8)
    claimed = worker.claim_batch()
    assert claimed == [job["id"] for job in jobs]
    thread = _in_thread(worker, claimed)
    try:
        wait_for_step(client, cancel["id"], 2)
        assert client.post(f"/v1/jobs/{cancel['id']}/cancel").status_code == 202
        assert client.delete("/v1/tasks/drop").status_code == 204  # its job goes with it, mid-pack
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert client.get(f"/v1/jobs/{cancel['id']}").json()["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{drop['id']}").status_code == 404
    finished = client.get(f"/v1/jobs/{keep['id']}").json()
    assert finished["status"] == "succeeded" and finished["progress"]["step"] == 40
    assert client.post("/v1/infer", json={"task": "keep", "inputs": INPUTS}).status_code == 200

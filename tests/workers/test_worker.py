from __future__ import annotations

import threading
from datetime import timedelta

import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app.db.base import utcnow
from app.db.models import Job
from app.db.session import make_session_factory
from app.engine.core.model import FrozenModel
from tests.api.helpers import (
    create_dataset,
    create_task,
    start_job,
    toy_examples,
    train_task,
    wait_for_job,
    wait_for_step,
)
from workers.main import Worker, WorkerSettings


def test_base_weights_are_bit_identical_after_a_training_job(client: TestClient, frozen: FrozenModel) -> None:
    before = {name: tensor.clone() for name, tensor in frozen.model.state_dict().items()}
    train_task(client)
    after = frozen.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not p.requires_grad for p in frozen.model.parameters())


def test_job_of_a_dead_worker_is_requeued_then_finished(
    client_with,
    db_engine: Engine,
    frozen: FrozenModel,  # type: ignore[no-untyped-def]
) -> None:
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    job = start_job(client, "sentiment", create_dataset(client, toy_examples(12))["id"], steps=3)
    factory = make_session_factory(db_engine)
    # a worker claimed the job and then died: its heartbeat is old
    with factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(
                status="running",
                worker_id="dead-worker",
                attempts=1,
                heartbeat_at=utcnow() - timedelta(minutes=5),
                progress={"step": 2, "total_steps": 3, "loss": 0.5},
            )
        )
    Worker(factory, lambda: frozen, WorkerSettings(heartbeat_timeout_seconds=30)).requeue_stale()
    requeued = client.get(f"/v1/jobs/{job['id']}").json()
    assert requeued["status"] == "queued" and requeued["progress"]["step"] == 0  # the dead attempt's step is gone
    assert requeued["progress"]["total_steps"] == 3 and requeued["progress"]["loss"] is None
    worker = Worker(
        factory, lambda: frozen, WorkerSettings(poll_seconds=0.05, heartbeat_seconds=0.2, heartbeat_timeout_seconds=30)
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        finished = wait_for_job(client, job["id"])
    finally:
        worker.stop.set()
        thread.join()
    assert finished["status"] == "succeeded" and finished["attempts"] == 2
    kinds = [e["kind"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()]
    assert kinds.index("requeued") < kinds.index("started") and kinds[-1] == "succeeded"


def test_job_is_failed_after_its_last_attempt_dies(client_with, db_engine: Engine, frozen: FrozenModel) -> None:  # type: ignore[no-untyped-def]
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    job = start_job(client, "sentiment", create_dataset(client, toy_examples(12))["id"])
    factory = make_session_factory(db_engine)
    with factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(
                status="running",
                worker_id="dead",
                attempts=3,
                max_attempts=3,
                heartbeat_at=utcnow() - timedelta(minutes=5),
            )
        )
    worker = Worker(factory, lambda: frozen, WorkerSettings(heartbeat_timeout_seconds=30))
    worker.requeue_stale()
    finished = client.get(f"/v1/jobs/{job['id']}").json()
    assert finished["status"] == "failed" and "went silent" in finished["error"]


def test_stopping_a_worker_hands_its_job_back_to_the_queue(client_with, db_engine: Engine, frozen: FrozenModel) -> None:  # type: ignore[no-untyped-def]
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    job = start_job(
        client, "sentiment", create_dataset(client, toy_examples(12))["id"], steps=100000, eval_every=100000
    )
    worker = Worker(make_session_factory(db_engine), lambda: frozen, WorkerSettings(poll_seconds=0.05))
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for_step(client, job["id"], 1)
    worker.stop.set()  # what SIGTERM does
    thread.join(timeout=30)
    assert not thread.is_alive()
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "queued" and after["attempts"] == 0
    assert [e["kind"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()][-1] == "requeued"


def test_a_seeded_job_is_reproducible(client: TestClient) -> None:
    _t, first = train_task(client, "one")
    dataset = create_dataset(client, toy_examples(40))
    create_task(client, "two")
    second = wait_for_job(client, start_job(client, "two", dataset["id"])["id"])
    inputs = ["a good film", "a bad film", "the plot"]
    one = client.post("/v1/infer", json={"task": "one", "inputs": inputs}).json()["outputs"]
    two = client.post("/v1/infer", json={"task": "two", "inputs": inputs}).json()["outputs"]
    assert second["status"] == "succeeded" and one == two

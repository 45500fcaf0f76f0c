"""Stopping a worker (SIGTERM, or the API shutting down) mid-pass: the job goes back to the queue within moments,
whatever its kind, even when one of its steps or passes takes much longer than that."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.db.session import make_session_factory
from app.engine.core.model import FrozenModel
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from tests.api.helpers import FAST, create_dataset, create_task, toy_examples
from tests.conftest import LOCAL_URL, make_settings
from tests.workers.slow_jobs import long_examples, slow_meta_init
from workers.main import Worker, WorkerSettings

STOP_WITHIN = 2.0  # seconds from stop.set() to the worker thread's end: each job below computes far longer
VALIDATION_EXAMPLES = 1000  # long inputs (tests/workers/slow_jobs.py): a pass over them all takes many seconds


@contextmanager
def running_worker(db_engine: Engine, frozen: FrozenModel) -> Iterator[Callable[[], float]]:
    """A worker thread on the test database; yields stop(): set its stop event (what SIGTERM does) and wait for
    its loop to end, returning the seconds that took."""
    worker = Worker(make_session_factory(db_engine), lambda: frozen, WorkerSettings(poll_seconds=0.05))
    thread = threading.Thread(target=worker.run)
    thread.start()

    def stop() -> float:
        started = time.monotonic()
        worker.stop.set()
        thread.join(timeout=600)
        return time.monotonic() - started

    try:
        yield stop
    finally:
        stop()
        assert not thread.is_alive()


def wait_until(
    client: TestClient, job_id: int, reached: Callable[[dict[str, Any]], bool], timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if reached(job):
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s")


def assert_requeued(client: TestClient, job_id: int) -> None:
    """Back in the queue, its attempt not counted, and the last event says why."""
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 0, job
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    assert events[-1]["kind"] == "requeued" and "shutting down" in events[-1]["message"], events[-1]


def test_a_stop_mid_outer_step_requeues_a_meta_init_job_within_moments(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(run_worker=False)
    job = slow_meta_init(client)
    with running_worker(db_engine, frozen) as stop:
        # Evaluated at step 0: the worker is inside outer step 1.
        wait_until(client, job["id"], lambda j: j["progress"].get("val_loss") is not None)
        took = stop()
    assert took < STOP_WITHIN, f"the worker took {took:.1f} s to stop"
    assert_requeued(client, job["id"])
    # Ended inside outer step 1: the step never finished (before, it ran to its end, then the job stopped).
    assert [point["step"] for point in client.get(f"/v1/jobs/{job['id']}/metrics").json()] == [0]


def test_a_stop_mid_validation_requeues_packed_train_jobs_within_moments(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    train = create_dataset(client, toy_examples(12))
    val = create_dataset(client, long_examples(VALIDATION_EXAMPLES, seed=1), name="val")
    hyper = {**FAST, "steps": 1, "max_validation_examples": VALIDATION_EXAMPLES}
    body = {"type": "train", "task": "sentiment", "dataset_id": train["id"], "validation_dataset_id": val["id"]}
    jobs = [client.post("/v1/jobs", json={**body, "hyperparameters": hyper}).json() for _ in range(2)]
    with running_worker(db_engine, frozen) as stop:
        for job in jobs:
            wait_until(client, job["id"], lambda j: j["status"] == "running")
        time.sleep(0.5)  # into the first job's validation at step 0: many seconds of long inputs
        took = stop()
    assert took < STOP_WITHIN, f"the worker took {took:.1f} s to stop"
    for job in jobs:
        assert_requeued(client, job["id"])
        events = client.get(f"/v1/jobs/{job['id']}/events").json()
        assert any(e["kind"] == "packed" for e in events), events  # both trained in shared passes
        # No validation finished (before, both ran to their end, then the jobs stopped before step 1).
        assert not any(e["kind"] == "metrics" for e in events), events


def test_a_stop_mid_teacher_pass_requeues_a_distill_job_within_moments(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    train = create_dataset(client, long_examples(VALIDATION_EXAMPLES, seed=2))
    teacher = {"instruction": "Say whether the review is positive or negative."}
    body = {"type": "distill", "task": "sentiment", "dataset_id": train["id"], "teacher": teacher}
    job = client.post("/v1/jobs", json={**body, "hyperparameters": {**FAST, "steps": 1}}).json()
    with running_worker(db_engine, frozen) as stop:
        wait_until(client, job["id"], lambda j: j["status"] == "running")
        time.sleep(0.5)  # into the teacher's soft labels for every training input: many seconds
        took = stop()
    assert took < STOP_WITHIN, f"the worker took {took:.1f} s to stop"
    assert_requeued(client, job["id"])
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert not any(e["kind"] == "metrics" for e in events), events  # before, it went on to validate at step 0


def test_shutting_the_api_down_requeues_its_embedded_workers_job_within_moments(
    client_with: Callable[..., TestClient], database_url: str, tmp_path: Path, frozen: FrozenModel
) -> None:
    settings = make_settings(database_url, tmp_path / "api")
    app = create_app(settings, runtime=ModelRuntime.from_model(frozen, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as api:  # its lifespan runs the embedded worker
        job = slow_meta_init(api)
        wait_until(api, job["id"], lambda j: j["progress"].get("val_loss") is not None)
        started = time.monotonic()
    took = time.monotonic() - started  # the lifespan's shutdown: stop the worker, join its thread
    assert took < STOP_WITHIN, f"the API took {took:.1f} s to shut down"
    client = client_with(run_worker=False)
    assert_requeued(client, job["id"])
    assert [point["step"] for point in client.get(f"/v1/jobs/{job['id']}/metrics").json()] == [0]

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine, update

from app.db.base import utcnow
from app.db.models import Job, JobStatus, Task
from app.db.repositories import JobRepository
from app.db.session import make_session_factory


def _queue_jobs(engine: Engine, n: int) -> list[int]:
    with make_session_factory(engine).begin() as session:
        task = Task(name="t", kind="generation", labels=[], template="{input}")
        session.add(task)
        session.flush()
        jobs = [Job(type="train", task_id=task.id, hyperparameters={}, progress={}) for _ in range(n)]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def test_two_workers_never_claim_the_same_job(db_engine: Engine) -> None:
    ids = _queue_jobs(db_engine, 20)
    factory = make_session_factory(db_engine)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        barrier.wait()
        while True:
            with factory.begin() as session:  # each claim is its own connection and transaction
                job_id = JobRepository(session).claim(name)
            if job_id is None:
                return
            claimed[name].append(job_id)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    together = claimed["a"] + claimed["b"]
    assert sorted(together) == ids  # every job claimed exactly once
    with factory() as session:
        rows = session.query(Job).all()
        assert {job.status for job in rows} == {JobStatus.running}
        assert {job.id: job.worker_id for job in rows} == {
            job_id: name for name, got in claimed.items() for job_id in got
        }


def test_claim_takes_higher_priority_first(db_engine: Engine) -> None:
    ids = _queue_jobs(db_engine, 3)
    factory = make_session_factory(db_engine)
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == ids[2]).values(priority=5))
    with factory.begin() as session:
        assert JobRepository(session).claim("w") == ids[2]
    with factory.begin() as session:
        assert JobRepository(session).claim("w") == ids[0]


def test_heartbeat_of_a_worker_that_lost_its_job_reports_none(db_engine: Engine) -> None:
    (job_id,) = _queue_jobs(db_engine, 1)
    factory = make_session_factory(db_engine)
    with factory.begin() as session:
        JobRepository(session).claim("w1")
    with factory.begin() as session:
        assert JobRepository(session).heartbeat(job_id, "w1", {"step": 3}) is False
        assert JobRepository(session).heartbeat(job_id, "w2", None) is None


def test_stale_running_finds_only_silent_jobs(db_engine: Engine) -> None:
    ids = _queue_jobs(db_engine, 2)
    factory = make_session_factory(db_engine)
    with factory.begin() as session:
        repo = JobRepository(session)
        repo.claim("w1")
        repo.claim("w2")
        session.execute(update(Job).where(Job.id == ids[0]).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    with factory.begin() as session:
        stale = JobRepository(session).stale_running(timedelta(seconds=60))
        assert [job.id for job in stale] == [ids[0]]

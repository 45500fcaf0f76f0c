"""Figures for operators: jobs by status, training speed, how recently each worker beat (for GET /metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.repositories import JobRepository


@dataclass(frozen=True)
class JobGauges:
    by_status: dict[str, int]  # every status, 0 where none
    steps_per_second: float  # over the running jobs: each one's steps so far over the seconds since it started
    heartbeat_age: dict[str, float]  # worker id -> seconds since its latest heartbeat (workers with a running job)


def job_gauges(session: Session) -> JobGauges:
    repo = JobRepository(session)
    counts = repo.count_by_status()
    now = utcnow()
    speed = 0.0
    ages: dict[str, float] = {}
    for job in repo.running():
        if job.started_at is not None:
            elapsed = (now - job.started_at).total_seconds()
            if elapsed > 0:
                speed += float(job.progress.get("step", 0) or 0) / elapsed
        if job.worker_id is not None and job.heartbeat_at is not None:
            age = max(0.0, (now - job.heartbeat_at).total_seconds())
            ages[job.worker_id] = min(age, ages.get(job.worker_id, age))
    return JobGauges({status.value: counts.get(status.value, 0) for status in JobStatus}, speed, ages)

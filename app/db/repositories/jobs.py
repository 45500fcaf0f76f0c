"""Jobs, the queue of the workers: listing and quotas, their events and metric curves, and a worker's side of the
queue (claim in one statement, heartbeat, finish, release, and the running jobs whose worker went silent)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, update

from app.db.base import utcnow
from app.db.models import Job, JobEvent, JobMetric, JobStatus, JobTrial
from app.db.repositories.tenancy import Repository

ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)


class JobRepository(Repository[Job]):
    model = Job

    def get(self, job_id: int) -> Job | None:
        """The tenant's job of this id."""
        return self._get(job_id)

    def list(self, *, task_id: int | None, status: JobStatus | None, limit: int, offset: int) -> Sequence[Job]:
        """The tenant's jobs (of one task, in one status), newest first."""
        stmt = self._own(select(Job)).order_by(Job.id.desc()).limit(limit).offset(offset)
        if task_id is not None:
            stmt = stmt.where(Job.task_id == task_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        return self.session.scalars(stmt).all()

    def active_count(self) -> int:
        """Queued and running jobs of the tenant (what the concurrent-trainings quota counts)."""
        stmt = self._own(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES)))
        return int(self.session.scalar(stmt) or 0)

    def add_event(self, job_id: int, kind: str, message: str = "", data: dict[str, Any] | None = None) -> None:
        """Append an event to the job's log (what its stream and page show)."""
        self.session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data or {}))
        self.session.flush()

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (the session's tenant's, or every tenant's for an unscoped session)."""
        stmt: Select[Any] = self._own(select(Job.status, func.count()).group_by(Job.status))  # type: ignore[arg-type]
        return {status.value: count for status, count in self.session.execute(stmt).all()}

    def running(self) -> Sequence[Job]:
        """The running jobs, with their workers, heartbeats and progress."""
        return self.session.scalars(self._own(select(Job).where(Job.status == JobStatus.running))).all()

    def add_metrics(self, job_id: int, attempt: int, points: Sequence[dict[str, Any]]) -> None:
        """Points of the job's curve (dicts of JobMetric's columns besides job_id and attempt)."""
        self.session.add_all([JobMetric(job_id=job_id, attempt=attempt, **point) for point in points])
        self.session.flush()

    def metrics(self, job_id: int, *, after_id: int = 0, limit: int | None = None) -> Sequence[JobMetric]:
        """The job's curve after the point after_id, oldest first."""
        stmt = select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.id > after_id).order_by(JobMetric.id)
        return self.session.scalars(stmt if limit is None else stmt.limit(limit)).all()

    def save_trial(self, job_id: int, attempt: int, number: int, **values: Any) -> JobTrial:
        """Insert or update trial `number` of the job's attempt (values: JobTrial's other columns)."""
        trial = self.session.scalars(
            select(JobTrial).where(JobTrial.job_id == job_id, JobTrial.attempt == attempt, JobTrial.number == number)
        ).one_or_none()
        if trial is None:
            trial = JobTrial(job_id=job_id, attempt=attempt, number=number, **values)
            self.session.add(trial)
        else:
            for name, value in values.items():
                setattr(trial, name, value)
        self.session.flush()
        return trial

    def trials(self, job_id: int) -> Sequence[JobTrial]:
        """The trials of the job's latest attempt that recorded any, by number."""
        latest = select(func.max(JobTrial.attempt)).where(JobTrial.job_id == job_id).scalar_subquery()
        stmt = select(JobTrial).where(JobTrial.job_id == job_id, JobTrial.attempt == latest).order_by(JobTrial.number)
        return self.session.scalars(stmt).all()

    def events(self, job_id: int, *, after_id: int, limit: int) -> Sequence[JobEvent]:
        """The job's events after after_id, oldest first."""
        stmt = (
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
        )
        return self.session.scalars(stmt).all()

    def claim(self, worker_id: str, now: datetime | None = None, *, types: Collection[str] | None = None) -> int | None:
        """Atomically move the best queued job (of one of `types`, when given) to running for this worker; its id,
        or None.

        One statement: on PostgreSQL the inner SELECT takes the row with FOR UPDATE SKIP LOCKED, so two
        workers never pick the same job; SQLite ignores the clause but serialises writers (BEGIN IMMEDIATE).
        """
        now = now or utcnow()
        candidate = (
            select(Job.id)
            .where(Job.status == JobStatus.queued, *(() if types is None else (Job.type.in_(list(types)),)))
            .order_by(Job.priority.desc(), Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(Job)
            .where(Job.id == candidate, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                worker_id=worker_id,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                started_at=now,
                error=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def heartbeat(self, job_id: int, worker_id: str, progress: dict[str, Any] | None) -> bool | None:
        """Record liveness (and progress); the job's cancel flag, or None when this worker lost the job."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.running)
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def finish(self, job_id: int, worker_id: str, status: JobStatus, **values: Any) -> bool:
        """Mark a running job of this worker finished; False when the job is no longer this worker's."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.running)
            .values(status=status, finished_at=utcnow(), **values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return self.session.execute(stmt).scalar_one_or_none() is not None

    def release(self, job_id: int, worker_id: str, progress: dict[str, Any] | None = None) -> bool:
        """Hand a running job back to the queue without counting the attempt (its worker is shutting down)."""
        values: dict[str, Any] = {"status": JobStatus.queued, "worker_id": None, "attempts": Job.attempts - 1}
        if progress is not None:
            values["progress"] = progress
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.running)
            .values(**values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return self.session.execute(stmt).scalar_one_or_none() is not None

    def stale_running(self, timeout: timedelta) -> Sequence[Job]:
        """Running jobs whose worker has been silent longer than timeout, locked for this transaction."""
        cutoff = utcnow() - timeout
        stmt = (
            select(Job)
            .where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
        return self.session.scalars(stmt).all()

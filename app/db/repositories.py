"""Every query of the service. Repositories add, find and change rows; they never commit."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, defer

from app.db.base import Base, utcnow
from app.db.models import Dataset, Job, JobEvent, JobStatus, Prompt, Task

ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)


Row = TypeVar("Row", bound=Base)


class _Repository(Generic[Row]):  # noqa: UP046  (PEP 695 syntax needs Python 3.12)
    """What every repository does the same way: add a row (flushed, so it has its id) and delete one."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: Row) -> Row:
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: Row) -> None:
        self.session.delete(row)
        self.session.flush()


class TaskRepository(_Repository[Task]):
    def get(self, task_id: int) -> Task | None:
        return self.session.get(Task, task_id)

    def get_by_name(self, name: str) -> Task | None:
        return self.session.scalar(select(Task).where(Task.name == name))

    def list(self, *, limit: int, offset: int) -> Sequence[Task]:
        return self.session.scalars(select(Task).order_by(Task.id).limit(limit).offset(offset)).all()

    def with_active_jobs(self, task_ids: Sequence[int]) -> set[int]:
        """Ids among task_ids that have a queued or running job."""
        if not task_ids:
            return set()
        rows = self.session.scalars(
            select(Job.task_id).where(Job.task_id.in_(task_ids), Job.status.in_(ACTIVE_STATUSES)).distinct()
        )
        return {task_id for task_id in rows if task_id is not None}


class DatasetRepository(_Repository[Dataset]):
    def get(self, dataset_id: int, *, with_examples: bool = False, lock: str | None = None) -> Dataset | None:
        """A dataset; lock "share" (a job about to reference it) or "update" (about to delete it) holds its row
        for the transaction on PostgreSQL, so a job and a delete of the same dataset never interleave (SQLite
        serialises writers anyway)."""
        options = [] if with_examples else [defer(Dataset.examples)]
        if lock is None:
            return self.session.get(Dataset, dataset_id, options=options)
        stmt = select(Dataset).options(*options).where(Dataset.id == dataset_id)
        return self.session.scalar(stmt.with_for_update(read=lock == "share"))

    def list(self, *, limit: int, offset: int) -> Sequence[Dataset]:
        stmt = select(Dataset).options(defer(Dataset.examples)).order_by(Dataset.id).limit(limit).offset(offset)
        return self.session.scalars(stmt).all()

    def active_job_ids(self, dataset_id: int) -> Sequence[int]:
        """Queued or running jobs that read this dataset: as their (validation) dataset, or as a source task's."""
        stmt = select(Job.id).where(
            Job.status.in_(ACTIVE_STATUSES),
            (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id),
        )
        ids = set(self.session.scalars(stmt).all())
        # A meta_init job names its datasets in its options (JSON, read here: JSON queries differ by backend).
        sources = select(Job.id, Job.options).where(Job.status.in_(ACTIVE_STATUSES), Job.type == "meta_init")
        for job_id, options in self.session.execute(sources):
            if any(entry.get("dataset_id") == dataset_id for entry in (options or {}).get("tasks", [])):
                ids.add(job_id)
        return sorted(ids)


class PromptRepository(_Repository[Prompt]):
    def add_version(self, prompt: Prompt) -> Prompt:
        """Insert the prompt as its task's next version number (meta-initialisations count among themselves)."""
        owner = Prompt.task_id.is_(None) if prompt.task_id is None else Prompt.task_id == prompt.task_id
        latest = self.session.scalar(select(func.max(Prompt.version)).where(owner))
        prompt.version = (latest or 0) + 1
        self.session.add(prompt)
        self.session.flush()
        return prompt

    def get(self, prompt_id: int, *, with_tensors: bool = False) -> Prompt | None:
        options = [] if with_tensors else [defer(Prompt.tensors)]
        return self.session.get(Prompt, prompt_id, options=options)

    def list(self, *, task_id: int | None, limit: int, offset: int, kind: str | None = None) -> Sequence[Prompt]:
        stmt = select(Prompt).options(defer(Prompt.tensors)).order_by(Prompt.id).limit(limit).offset(offset)
        if task_id is not None:
            stmt = stmt.where(Prompt.task_id == task_id)
        if kind is not None:
            stmt = stmt.where(Prompt.kind == kind)
        return self.session.scalars(stmt).all()

    def compatible(
        self, *, method: str, fingerprint: str, shapes: dict[str, builtins.list[int]], limit: int
    ) -> Sequence[Prompt]:
        """The newest `limit` versions (any task, and meta-initialisations) of this method and base model whose
        tensors have these shapes, tensors loaded: the candidates of a prompt transfer."""
        stmt = (
            select(Prompt)
            .where(Prompt.method == method, Prompt.base_model_fingerprint == fingerprint)
            .order_by(Prompt.id.desc())
        )
        found: builtins.list[Prompt] = []
        # Shapes are JSON, compared here rather than in SQL (JSON equality differs between the backends);
        # only metadata is read until a version matches.
        for prompt in self.session.scalars(stmt.options(defer(Prompt.tensors))):
            if prompt.shapes == shapes:
                found.append(prompt)
                if len(found) == limit:
                    break
        return found

    def latest_for_task(self, task_id: int, *, excluding: int | None = None) -> Prompt | None:
        stmt = select(Prompt).options(defer(Prompt.tensors)).where(Prompt.task_id == task_id)
        if excluding is not None:
            stmt = stmt.where(Prompt.id != excluding)
        return self.session.scalar(stmt.order_by(Prompt.version.desc()).limit(1))


class JobRepository(_Repository[Job]):
    def get(self, job_id: int) -> Job | None:
        return self.session.get(Job, job_id)

    def list(self, *, task_id: int | None, status: JobStatus | None, limit: int, offset: int) -> Sequence[Job]:
        stmt = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
        if task_id is not None:
            stmt = stmt.where(Job.task_id == task_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        return self.session.scalars(stmt).all()

    def add_event(self, job_id: int, kind: str, message: str = "", data: dict[str, Any] | None = None) -> None:
        self.session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data or {}))
        self.session.flush()

    def events(self, job_id: int, *, after_id: int, limit: int) -> Sequence[JobEvent]:
        stmt = (
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
        )
        return self.session.scalars(stmt).all()

    def claim(self, worker_id: str, now: datetime | None = None) -> int | None:
        """Atomically move the best queued job to running for this worker; its id, or None.

        One statement: on PostgreSQL the inner SELECT takes the row with FOR UPDATE SKIP LOCKED, so two
        workers never pick the same job; SQLite ignores the clause but serialises writers (BEGIN IMMEDIATE).
        """
        now = now or utcnow()
        candidate = (
            select(Job.id)
            .where(Job.status == JobStatus.queued)
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

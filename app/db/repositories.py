"""Every query of the service. Repositories add, find and change rows; they never commit.

Tenants: a session scoped to a tenant (`scope_session`, done by the API for every request and by the worker for a
job's inputs) sees and creates only that tenant's rows; every query below adds the condition itself. A session
without a tenant (the worker's queue and the maintenance paths) sees every tenant.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, defer

from app.db.base import Base, utcnow
from app.db.models import ApiKey, AuditEvent, Dataset, Job, JobEvent, JobMetric, JobStatus, Prompt, Task

ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)
TENANT = "tenant"  # the key of a session's tenant in Session.info

Row = TypeVar("Row", bound=Base)
Selected = TypeVar("Selected")


def scope_session(session: Session, tenant: str | None) -> Session:
    """From now on this session's repositories read and write only `tenant`'s rows (None: every tenant's)."""
    session.info[TENANT] = tenant
    return session


def session_tenant(session: Session) -> str | None:
    return session.info.get(TENANT)  # type: ignore[no-any-return]


class _Repository(Generic[Row]):  # noqa: UP046  (PEP 695 syntax needs Python 3.12)
    """What every repository does the same way: find a row of the session's tenant by id, add a row (flushed, so
    it has its id, and owned by the session's tenant) and delete one."""

    model: type[Row]
    scoped = True  # False: the rows are service-wide, read across tenants whatever the session's tenant

    def __init__(self, session: Session) -> None:
        self.session = session
        self.tenant = session_tenant(session) if self.scoped else None

    def _own(self, stmt: Select[Selected], model: type[Base] | None = None) -> Select[Selected]:
        """stmt restricted to the session's tenant, if it has one."""
        if self.tenant is None:
            return stmt
        return stmt.where((model or self.model).tenant == self.tenant)  # type: ignore[attr-defined]

    def _get(self, row_id: int, options: builtins.list[Any] | None = None) -> Row | None:
        # not session.get(): its identity-map shortcut would hand back another tenant's row loaded earlier
        stmt: Select[Any] = select(self.model).options(*(options or []))
        return self.session.scalar(self._own(stmt.where(self.model.id == row_id)))  # type: ignore[attr-defined]

    def add(self, row: Row) -> Row:
        if hasattr(row, TENANT):
            owner = getattr(row, TENANT)
            if self.tenant is not None:
                if owner is None:
                    setattr(row, TENANT, self.tenant)
                elif owner != self.tenant:
                    raise ValueError(f"a row of tenant {owner!r} cannot be added in tenant {self.tenant!r}")
            elif owner is None:
                raise ValueError(f"a new {type(row).__name__} needs a tenant")
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: Row) -> None:
        self.session.delete(row)
        self.session.flush()


class TaskRepository(_Repository[Task]):
    model = Task

    def get(self, task_id: int) -> Task | None:
        return self._get(task_id)

    def get_by_name(self, name: str) -> Task | None:
        return self.session.scalar(self._own(select(Task).where(Task.name == name)))

    def list(self, *, limit: int, offset: int) -> Sequence[Task]:
        return self.session.scalars(self._own(select(Task)).order_by(Task.id).limit(limit).offset(offset)).all()

    def ready(self, *, limit: int) -> Sequence[Task]:
        """The tenant's tasks with an active prompt version, by id."""
        stmt = self._own(select(Task)).where(Task.active_prompt_id.is_not(None)).order_by(Task.id)
        return self.session.scalars(stmt.limit(limit)).all()

    def with_active_jobs(self, task_ids: Sequence[int]) -> set[int]:
        """Ids among task_ids that have a queued or running job."""
        if not task_ids:
            return set()
        rows = self.session.scalars(
            select(Job.task_id).where(Job.task_id.in_(task_ids), Job.status.in_(ACTIVE_STATUSES)).distinct()
        )
        return {task_id for task_id in rows if task_id is not None}


class DatasetRepository(_Repository[Dataset]):
    model = Dataset

    def get(self, dataset_id: int, *, with_examples: bool = False, lock: str | None = None) -> Dataset | None:
        """A dataset; lock "share" (a job about to reference it) or "update" (about to delete it) holds its row
        for the transaction on PostgreSQL, so a job and a delete of the same dataset never interleave (SQLite
        serialises writers anyway)."""
        options = [] if with_examples else [defer(Dataset.examples)]
        if lock is None:
            return self._get(dataset_id, options)
        stmt = self._own(select(Dataset).options(*options).where(Dataset.id == dataset_id))
        return self.session.scalar(stmt.with_for_update(read=lock == "share"))

    def list(self, *, limit: int, offset: int) -> Sequence[Dataset]:
        stmt = self._own(select(Dataset)).options(defer(Dataset.examples)).order_by(Dataset.id)
        return self.session.scalars(stmt.limit(limit).offset(offset)).all()

    def stored_bytes(self) -> int:
        """Bytes of the tenant's datasets and prompt versions: what the storage quota counts."""
        datasets = self.session.scalar(self._own(select(func.coalesce(func.sum(Dataset.size_bytes), 0))))
        prompts = self.session.scalar(self._own(select(func.coalesce(func.sum(Prompt.size_bytes), 0)), Prompt))
        return int(datasets or 0) + int(prompts or 0)

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
    model = Prompt

    def add_version(self, prompt: Prompt) -> Prompt:
        """Insert the prompt as its task's next version number (a tenant's meta-initialisations count among
        themselves)."""
        owner = (
            (Prompt.task_id.is_(None) & (Prompt.tenant == prompt.tenant))
            if prompt.task_id is None
            else Prompt.task_id == prompt.task_id
        )
        latest = self.session.scalar(select(func.max(Prompt.version)).where(owner))
        prompt.version = (latest or 0) + 1
        return self.add(prompt)

    def get(self, prompt_id: int, *, with_tensors: bool = False) -> Prompt | None:
        return self._get(prompt_id, [] if with_tensors else [defer(Prompt.tensors)])

    def list(self, *, task_id: int | None, limit: int, offset: int, kind: str | None = None) -> Sequence[Prompt]:
        stmt = self._own(select(Prompt)).options(defer(Prompt.tensors)).order_by(Prompt.id).limit(limit).offset(offset)
        if task_id is not None:
            stmt = stmt.where(Prompt.task_id == task_id)
        if kind is not None:
            stmt = stmt.where(Prompt.kind == kind)
        return self.session.scalars(stmt).all()

    def compatible(
        self, *, method: str, fingerprint: str, shapes: dict[str, builtins.list[int]], limit: int
    ) -> Sequence[Prompt]:
        """The newest `limit` versions (any task of the tenant, and its meta-initialisations) of this method and base
        model whose tensors have these shapes, tensors loaded: the candidates of a prompt transfer."""
        stmt = self._own(
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
    model = Job

    def get(self, job_id: int) -> Job | None:
        return self._get(job_id)

    def list(self, *, task_id: int | None, status: JobStatus | None, limit: int, offset: int) -> Sequence[Job]:
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
        stmt = select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.id > after_id).order_by(JobMetric.id)
        return self.session.scalars(stmt if limit is None else stmt.limit(limit)).all()

    def events(self, job_id: int, *, after_id: int, limit: int) -> Sequence[JobEvent]:
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


class ApiKeyRepository(_Repository[ApiKey]):
    """Keys are service-wide (an admin manages every tenant's), so these queries are not scoped."""

    model = ApiKey
    scoped = False

    def get(self, key_id: int) -> ApiKey | None:
        return self._get(key_id)

    def by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))

    def any_created(self) -> bool:
        """Whether a key was ever created (revoked keys count: the service never falls back to single-user mode)."""
        return self.session.scalar(select(ApiKey.id).limit(1)) is not None

    def list(self, *, tenant: str | None, limit: int, offset: int) -> Sequence[ApiKey]:
        stmt = select(ApiKey).order_by(ApiKey.id).limit(limit).offset(offset)
        if tenant is not None:
            stmt = stmt.where(ApiKey.tenant == tenant)
        return self.session.scalars(stmt).all()


class AuditRepository(_Repository[AuditEvent]):
    """The log is the operator's (admin scope): read across tenants, optionally one tenant's."""

    model = AuditEvent
    scoped = False

    def list(self, *, tenant: str | None, after_id: int, limit: int) -> Sequence[AuditEvent]:
        stmt = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id).limit(limit)
        if tenant is not None:
            stmt = stmt.where(AuditEvent.tenant == tenant)
        return self.session.scalars(stmt).all()

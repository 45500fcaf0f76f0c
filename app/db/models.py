"""Tables: tasks, datasets, jobs (+ their event log) and prompt versions, each owned by a tenant; API keys and the
audit log.

Ids are never reused, on any backend: PostgreSQL sequences never go back, and SQLite tables are AUTOINCREMENT
(without it SQLite hands a deleted row's id to the next insert, and a process that cached the old prompt under that
id would serve it for the new one).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Always hands back aware UTC datetimes (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class PromptKind(enum.StrEnum):
    task = "task"  # a version of one task
    meta_init = "meta_init"  # a meta-learned initialisation, of no task


FINISHED_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)

# The tenant of single-user mode, of the PROMPTBANK_ADMIN_KEY, and of every row stored before tenants existed.
DEFAULT_TENANT = "default"


def _tenant_column() -> Mapped[str]:
    return mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT, index=True)


class Task(Base):
    __tablename__ = "tasks"
    # names are unique per tenant: another tenant's names are neither taken nor revealed
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_tasks_tenant_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = _tenant_column()
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    template: Mapped[str] = mapped_column(Text)
    # No FK on purpose: a prompt row points at its task and the task at its active prompt; the service keeps
    # the two consistent inside one transaction, and a cycle of FKs makes deletes order-dependent.
    active_prompt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # served by default instead of the active version: prompt ids, or {"top": k} (best k by validation)
    ensemble: Mapped[Any] = mapped_column(JSON, nullable=True)
    # canary traffic: [{"prompt_id", "weight"}] splitting the task's requests between versions (weights sum to 1)
    traffic: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # the evaluation gate's set: every new version is scored on it (no FK: a deleted dataset just stops scoring)
    evaluation_dataset_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # False: a job on a task without an evaluation set holds none out of its dataset (app/services/holdout.py)
    evaluation_holdout: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    prompts: Mapped[list[Prompt]] = relationship(
        back_populates="task", cascade="all, delete-orphan", passive_deletes=True
    )
    jobs: Mapped[list[Job]] = relationship(back_populates="task", cascade="all, delete-orphan", passive_deletes=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = _tenant_column()
    name: Mapped[str] = mapped_column(String(200))
    num_examples: Mapped[int] = mapped_column(Integer)
    # bytes of the examples as stored (what a tenant's storage quota counts); 0 for datasets stored before it
    size_bytes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    # [{"input": ..., "output": ...}, ...]; a dataset is written once and read whole by a training job.
    examples: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    # False for inputs without outputs (only a distillation job with alpha = 0 trains on those)
    labeled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # a task's held-out evaluation set: the dataset its examples were taken from (no FK: the source may be deleted
    # and this set stays) and their positions there, from 0, in this dataset's order
    source_dataset_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source_rows: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = _tenant_column()
    type: Mapped[str] = mapped_column(String(32))
    # None for a job that serves no one task (a meta_init job reads several; they are in its options)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True, nullable=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True)
    validation_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    # the method's config (app/engine/methods), validated when the job was queued
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # the job kind's own (its Options model in workers/jobs/): a length search's lengths, a distillation's teacher
    # and alpha, a meta_init job's tasks and loops (revision 0008 moved the last two out of hyperparameters)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # whether the version the job stores becomes active: always, if_better (on the evaluation set), never
    promote: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # decided at enqueue (app/services/holdout.py): the task's evaluation set, the rows of the source dataset this
    # job never trains on, whether this job held them out, and why none were; None for a job of no task
    evaluation_holdout: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=16), default=JobStatus.queued
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result_prompt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    task: Mapped[Task | None] = relationship(back_populates="jobs")
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="JobEvent.id"
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events")


class JobMetric(Base):
    """One point of a job's training curve: after an optimizer step (loss, learning rate) or an evaluation
    (validation loss and score), of one attempt; seconds count from that attempt's start."""

    __tablename__ = "job_metrics"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    learning_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float] = mapped_column(Float)


class PromptEvaluation(Base):
    """A version's scores on an evaluation dataset (accuracy, macro-F1, calibration error; or exact match and
    token F1 for generation)."""

    __tablename__ = "prompt_evaluations"
    __table_args__ = (
        UniqueConstraint("prompt_id", "dataset_id", name="uq_prompt_evaluations_prompt_id_dataset_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobTrial(Base):
    """One configuration a tune job tried: its method and hyperparameters, its validation score at each
    evaluation, its best value, and how it ended; numbered from 0 within the job's attempt."""

    __tablename__ = "job_trials"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "number", name="uq_job_trials_job_id_attempt_number"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    steps: Mapped[int] = mapped_column(Integer)  # optimizer steps it ran
    scores: Mapped[list[float]] = mapped_column(JSON)  # validation score per evaluation
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # its best score (what the search ranks)
    state: Mapped[str] = mapped_column(String(16))  # running, pruned, finished, failed


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("task_id", "version", name="uq_prompts_task_id_version"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = _tenant_column()
    # None for a meta-initialisation: a prompt of no task, numbered among the tenant's meta-initialisations
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default=PromptKind.task, server_default="task")
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(64))
    # positions the prompt adds to each row (before and after the input; 0 for input_mapping), and the width of
    # its vectors (the base model's hidden size); named num_virtual_tokens and hidden_size before revision 0009
    positions: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    base_model_name: Mapped[str] = mapped_column(String(200))
    base_model_fingerprint: Mapped[str] = mapped_column(String(64))
    tensors: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # name -> shape of each stored tensor (what GET /v1/prompts shows without reading the tensors)
    shapes: Mapped[dict[str, list[int]] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True)
    # How the version was made (job type, teachers, source tasks, init version, hyperparameters): plain ids and
    # names, no foreign keys, so deleting a teacher or a source never touches its students.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    task: Mapped[Task | None] = relationship(back_populates="prompts")


class ApiKey(Base):
    """A bearer key: only its SHA-256 is stored; revoked keys stay (an id is never reused, and a service that
    once had keys never falls back to single-user mode)."""

    __tablename__ = "api_keys"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in lists
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # per-key rate limit and quotas; a missing entry takes the service's default (Settings)
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the operator's key (`promptbank keys create --admin`): manages keys and reads the audit log of every tenant;
    # only the command line makes one, never the API
    operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """Who deleted, activated or changed keys, and when: written in the transaction of the change itself."""

    __tablename__ = "audit_log"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(64))  # "key 12", "admin key" (PROMPTBANK_ADMIN_KEY), "local user"
    action: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

"""Training jobs: queue one, watch its progress and event log, cancel it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from sqlalchemy.orm import Session

from app.api.deps import (
    AUTH_RESPONSES,
    READ,
    TRAIN,
    IdPath,
    LimitDep,
    OffsetDep,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    Trainer,
)
from app.api.schemas import (
    DistillJobCreate,
    ErrorResponse,
    JobCreate,
    JobEventOut,
    JobOut,
    JobProgress,
    LengthSearchJobCreate,
    MetaInitJobCreate,
)
from app.db.base import MAX_ID
from app.db.models import Job, JobStatus
from app.engine.model import FrozenModel
from app.services import jobs as service
from app.services import quotas
from app.services import transfer_jobs as transfer
from app.services.job_types import LengthSearch
from app.services.tasks import resolve_task

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)


def job_out(session: Session, job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        type=job.type,
        task=job.task_id,
        task_name=job.task.name if job.task is not None else None,
        dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id,
        status=job.status.value,
        progress=JobProgress.model_validate(job.progress or {}),
        hyperparameters=job.hyperparameters,
        options=job.options or {},
        result_prompt_id=job.result_prompt_id,
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _enqueue(body: JobCreate, session: Session, model: FrozenModel | None, max_attempts: int) -> Job:
    """Hand the body to the service of its job type."""
    common: dict[str, Any] = {"priority": body.priority, "max_attempts": max_attempts, "model": model}
    if isinstance(body, DistillJobCreate):
        return transfer.enqueue_distill(
            session,
            task=resolve_task(session, body.task),
            dataset_id=body.dataset_id,
            validation_dataset_id=body.validation_dataset_id,
            teacher=body.teacher.model_dump(mode="json"),
            hyperparameters=body.hyperparameters,
            **common,
        )
    if isinstance(body, MetaInitJobCreate):
        return transfer.enqueue_meta_init(
            session,
            name=body.name,
            tasks=[entry.model_dump() for entry in body.tasks],
            hyperparameters=body.hyperparameters,
            **common,
        )
    options = {}
    if isinstance(body, LengthSearchJobCreate):
        options = {"search": (body.search or LengthSearch()).model_dump(mode="json")}
    return service.enqueue_training(
        session,
        task=resolve_task(session, body.task),
        dataset_id=body.dataset_id,
        validation_dataset_id=body.validation_dataset_id,
        config=body.hyperparameters,
        job_type=body.type,
        options=options,
        **common,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
)
def create_job(
    principal: Trainer,
    body: Annotated[JobCreate, Body()],
    session: SessionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
) -> JobOut:
    """Queue a job: train (any method), length_search, distill (from a teacher) or meta_init (MAML over tasks)."""
    quotas.check_new_job(session, principal.limits)
    return job_out(session, _enqueue(body, session, runtime.model, settings.max_job_attempts))


@router.get("", dependencies=[READ], responses={404: {"model": ErrorResponse, "description": "?task= names no task"}})
def list_jobs(
    session: ReadSessionDep,
    limit: LimitDep,
    offset: OffsetDep,
    task: str | None = Query(None, description="Only this task's jobs (id or name)."),
    status: JobStatus | None = Query(None, description="Only jobs in this status."),
) -> list[JobOut]:
    """List jobs, newest first."""
    owner = resolve_task(session, task) if task is not None else None
    jobs = service.list_jobs(session, task=owner, status=status, limit=limit, offset=offset)
    return [job_out(session, job) for job in jobs]


@router.get("/{job_id}", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_job(job_id: IdPath, session: ReadSessionDep) -> JobOut:
    """One job with its progress."""
    return job_out(session, service.get_job(session, job_id))


@router.get("/{job_id}/events", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_job_events(
    job_id: IdPath,
    session: ReadSessionDep,
    limit: LimitDep,
    after: int = Query(0, ge=0, le=MAX_ID, description="Only events with an id above this (for polling)."),
) -> list[JobEventOut]:
    """The job's ordered log: queued, started, metrics, finished or failed with the reason."""
    return [JobEventOut.model_validate(e) for e in service.job_events(session, job_id, after_id=after, limit=limit)]


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[TRAIN],
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def cancel_job(job_id: IdPath, session: SessionDep) -> JobOut:
    """Cancel a queued job now, or a running one at its next step."""
    return job_out(session, service.cancel_job(session, job_id))

"""Training jobs: queue one, watch its progress and event log, cancel it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Body, Header, Query, Request, status
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from app.api.auth import PrincipalDep
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
    ErrorResponse,
    JobCreate,
    JobEventOut,
    JobHoldout,
    JobMetricOut,
    JobOut,
    JobProgress,
    TrialList,
    TrialOut,
)
from app.db.base import MAX_ID
from app.db.models import Job, JobMetric, JobStatus
from app.db.repositories import scope_session
from app.errors import InvalidInput, NotFound
from app.services import jobs as service
from app.services import quotas
from app.services.tasks import resolve_task
from workers.jobs import job_kind

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)


def holdout_out(stored: dict[str, Any] | None) -> JobHoldout | None:
    if stored is None:
        return None
    return JobHoldout(
        evaluation_dataset_id=stored["evaluation_dataset_id"],
        excluded=len(stored["rows"]),
        created=stored["created"],
        reason=stored["reason"],
    )


def job_out(session: Session, job: Job) -> JobOut:
    hyperparameters, options = job_kind(job.type).shown(job)
    return JobOut(
        id=job.id,
        type=job.type,
        task=job.task_id,
        task_name=job.task.name if job.task is not None else None,
        dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id,
        status=job.status.value,
        progress=JobProgress.model_validate(job.progress or {}),
        hyperparameters=hyperparameters,
        options=options,
        promote=job.promote or "always",
        evaluation_holdout=holdout_out(job.evaluation_holdout),
        result_prompt_id=job.result_prompt_id,
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
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
    """Queue a job: train (any method), length_search, tune (a search), distill (from a teacher) or meta_init
    (MAML over tasks)."""
    quotas.check_new_job(session, principal.limits)
    kind = job_kind(body.type)
    planned = kind.check(session, body, runtime.model)
    promote = body.promote or kind.default_promote
    job = service.enqueue(
        session,
        planned,
        priority=body.priority,
        max_attempts=settings.max_job_attempts,
        promote=promote,
        limits=principal.limits,
    )
    return job_out(session, job)


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


@router.get("/{job_id}/metrics", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_job_metrics(job_id: IdPath, session: ReadSessionDep) -> list[JobMetricOut]:
    """The job's training curve: step, loss, learning rate, validation loss and score, seconds; per attempt."""
    return [JobMetricOut.model_validate(point) for point in service.job_metrics(session, job_id)]


@router.get("/{job_id}/trials", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_job_trials(job_id: IdPath, session: ReadSessionDep) -> TrialList:
    """The configurations a tune job tried: method, hyperparameters, steps, validation scores, value and state."""
    return TrialList(data=[TrialOut.model_validate(trial) for trial in service.job_trials(session, job_id)])


STREAM_PAGE = 500  # events or points read per poll


def _cursor(last_event_id: str | None) -> tuple[int, int]:
    """Last-Event-ID "E.M": the last job event id and metric row id the client received."""
    if last_event_id is None or not last_event_id.strip():
        return 0, 0
    event, _, metric = last_event_id.strip().partition(".")
    if not (event.isascii() and event.isdigit() and metric.isascii() and metric.isdigit()):
        raise InvalidInput(
            f"Last-Event-ID {last_event_id[:40]!r} is not an id this stream sent (of the form 12.40); "
            "send the id of the last event received, or none to start from the beginning",
            code="invalid_last_event_id",
        )
    return min(int(event), MAX_ID), min(int(metric), MAX_ID)


def _metric(row: JobMetric) -> dict[str, Any]:
    return JobMetricOut.model_validate(row, from_attributes=True).model_dump()


@router.get(
    "/{job_id}/stream",
    dependencies=[READ],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events until the job ends."},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse, "description": "invalid_last_event_id"},
    },
)
async def stream_job(
    job_id: IdPath,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Server-sent events of the job as it runs: `job` (status and progress, when they change), `event` (the
    event log), `metric` (the curve's points), and `end` (the finished job) last; or `timeout` after
    PROMPTBANK_JOB_STREAM_MAX_SECONDS. Resumes after Last-Event-ID."""
    cursor = _cursor(last_event_id)

    def read(after: tuple[int, int]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], bool]:
        with request.app.state.read_session_factory() as session:
            scoped = scope_session(session, principal.tenant)
            updates = service.job_updates(
                scoped, job_id, after_event=after[0], after_metric=after[1], limit=STREAM_PAGE
            )
            job = job_out(scoped, updates.job).model_dump(mode="json")
            events = [JobEventOut.model_validate(e).model_dump(mode="json") for e in updates.events]
            metrics = [{"id": m.id, **_metric(m)} for m in updates.metrics]
            return job, events, metrics, updates.finished

    first = await anyio.to_thread.run_sync(read, cursor)  # an unknown job is a plain 404

    async def events() -> AsyncIterator[dict[str, Any]]:
        nonlocal cursor
        closes = time.monotonic() + settings.job_stream_max_seconds
        job, new_events, new_metrics, finished = first
        shown: Any = None
        while True:
            state = (job["status"], job["progress"])
            if state != shown:
                shown = state
                yield {"event": "job", "data": json.dumps(job)}
            for event in new_events:
                cursor = (event["id"], cursor[1])
                yield {"event": "event", "id": f"{cursor[0]}.{cursor[1]}", "data": json.dumps(event)}
            for point in new_metrics:
                cursor = (cursor[0], point.pop("id"))
                yield {"event": "metric", "id": f"{cursor[0]}.{cursor[1]}", "data": json.dumps(point)}
            more = len(new_events) == STREAM_PAGE or len(new_metrics) == STREAM_PAGE
            if finished and not more:
                yield {"event": "end", "data": json.dumps(job)}
                return
            if time.monotonic() >= closes:  # a bounded stream: the client resumes with Last-Event-ID
                yield {
                    "event": "timeout",
                    "data": json.dumps({"resume_with_last_event_id": f"{cursor[0]}.{cursor[1]}"}),
                }
                return
            if not more:
                await asyncio.sleep(settings.job_stream_poll_seconds)
            try:
                job, new_events, new_metrics, finished = await anyio.to_thread.run_sync(read, cursor)
            except NotFound as exc:  # deleted with its task meanwhile
                yield {"event": "error", "data": json.dumps({"error": {"code": exc.code, "message": exc.message}})}
                return

    return EventSourceResponse(events(), ping=15)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[TRAIN],
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def cancel_job(job_id: IdPath, session: SessionDep) -> JobOut:
    """Cancel a queued job now, or a running one at its next step."""
    return job_out(session, service.cancel_job(session, job_id))

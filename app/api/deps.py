"""Annotated dependencies: a route signature reads like a sentence (def get_task(task: TaskDep) -> TaskOut)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from app.api.admission import ARRIVED, DISCONNECTED
from app.api.auth import Principal, PrincipalDep, need_admin, need_infer, need_operator, need_read, need_train
from app.api.schemas import ErrorResponse
from app.config import Settings
from app.db.base import MAX_ID
from app.db.models import Task
from app.db.repositories import scope_session
from app.engine.serving.runtime import ModelRuntime
from app.errors import PayloadTooLarge
from app.services.audit import act_as
from app.services.inference import RequestBudget
from app.services.tasks import resolve_task


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request, principal: PrincipalDep) -> Iterator[Session]:
    """A session for a request that may write, scoped to the caller's tenant: committed when the route returns,
    rolled back on any error."""
    with request.app.state.session_factory() as session:
        act_as(scope_session(session, principal.tenant), principal.actor)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_read_session(request: Request, principal: PrincipalDep) -> Iterator[Session]:
    """A session for a request that only reads (never holds SQLite's write lock), scoped to the caller's tenant."""
    with request.app.state.read_session_factory() as session:
        yield scope_session(session, principal.tenant)


# What a multipart body adds around its files (boundaries, part headers, small form fields).
MULTIPART_OVERHEAD = 64 * 1024


def refuse_declared_over(request: Request, limit: int, *, allowance: int = 0) -> None:
    """413 before reading a body whose declared Content-Length is over the upload limit (plus an allowance)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + allowance:
        raise PayloadTooLarge(f"the upload is {declared} bytes; the limit is {limit} (PROMPTBANK_MAX_UPLOAD_BYTES)")


def request_budget(request: Request, settings: Settings, timeout_ms: float | None) -> RequestBudget:
    """A model request's limits; its deadline counts from its arrival (Admission), not from when a thread took
    it, and its cancel event is set when its client disconnects."""
    arrived = getattr(request.state, ARRIVED, time.monotonic())
    seconds = (
        settings.max_request_seconds if timeout_ms is None else min(timeout_ms / 1000, settings.max_request_seconds)
    )
    return RequestBudget(
        deadline=arrived + seconds,
        cancel=getattr(request.state, DISCONNECTED, None),
        max_input_chars=settings.max_input_chars,
        max_tokens=settings.max_request_tokens,
    )


def get_runtime(request: Request) -> ModelRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": commit before the response is sent, so a failed commit can never follow a 2xx.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def _task_for_write(session: SessionDep, task: Annotated[str, Path(description="Task id or name")]) -> Task:
    return resolve_task(session, task)


def _task_for_read(session: ReadSessionDep, task: Annotated[str, Path(description="Task id or name")]) -> Task:
    return resolve_task(session, task)


# The caller, let through only with the scope the route needs (403 otherwise).
# (as a parameter where the route reads the principal, else in the route's dependencies=[...])
READ, INFER, TRAIN, ADMIN = (Depends(need) for need in (need_read, need_infer, need_train, need_admin))
Reader = Annotated[Principal, READ]
Inferrer = Annotated[Principal, INFER]
Trainer = Annotated[Principal, TRAIN]
AdminDep = Annotated[Principal, ADMIN]
OPERATOR = Depends(need_operator)  # the admin scope and the operator's key: views of the whole service

TaskDep = Annotated[Task, Depends(_task_for_read)]
WritableTaskDep = Annotated[Task, Depends(_task_for_write)]


def _page_limit(limit: int = Query(100, ge=1, le=1000, description="Most rows to return.")) -> int:
    return limit


def _page_offset(offset: int = Query(0, ge=0, le=MAX_ID, description="Rows to skip.")) -> int:
    return offset


# A row id in a path: out of range is a 422 saying so, never an overflow deeper down.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The id.")]
LimitDep = Annotated[int, Depends(_page_limit)]
OffsetDep = Annotated[int, Depends(_page_offset)]


# What every /v1 route may answer besides its own responses (router-level, so the schema states them).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No key, or an unknown or revoked one (auth_required, invalid_key)."},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this endpoint needs (missing_scope)."},
    413: {"model": ErrorResponse, "description": "The body is over PROMPTBANK_MAX_BODY_BYTES (payload_too_large)."},
    429: {"model": ErrorResponse, "description": "The key's rate limit (rate_limited, with Retry-After)."},
}

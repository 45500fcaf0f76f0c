"""Liveness and readiness: the model is loaded and the database answers (and whether the shared limits' Redis does).

Answered on the event loop, with its blocking reads (the database and Redis pings, and a key lookup for the details)
on threads of their own: never queued behind model requests waiting in the server's thread pool.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.auth import identify
from app.api.deps import OPERATOR
from app.api.schemas import Health, ModelHealth
from app.engine.serving.runtime import ModelRuntime
from app.errors import AppError
from app.services.shared_limits import SharedLimits

router = APIRouter(tags=["health"])

PING_SECONDS = 2.0  # a database slower than this to answer SELECT 1 counts as down


@router.get("/healthz", responses={503: {"model": Health}})
async def healthz(request: Request) -> JSONResponse:
    """200 when the model is loaded and the database is reachable, else 503 with what is missing; which model and
    device (and why loading failed) only for an admin key, or in single-user mode."""
    runtime: ModelRuntime = request.app.state.runtime
    try:
        await asyncio.wait_for(asyncio.to_thread(_ping, request), PING_SECONDS)
        database = True
    except Exception:
        database = False
    shared_limits = await _shared_limits(request.app.state.shared_limits)
    model = runtime.model
    model_health = ModelHealth(
        loaded=model is not None,
        name=model.identity.name if model else None,
        fingerprint=model.identity.fingerprint if model else None,
        device=str(model.device) if model else None,
        error=str(runtime.error) if runtime.error else (None if runtime.enabled else "model loading is switched off"),
    )
    ok = database and (model is not None or not runtime.enabled)
    if not await asyncio.to_thread(_sees_details, request):
        model_health = ModelHealth(loaded=model is not None, name=None, fingerprint=None, device=None, error=None)
    body = Health(status="ok" if ok else "degraded", model=model_health, database=database, shared_limits=shared_limits)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    dependencies=[OPERATOR],
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format."}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics of this API process (admin scope): HTTP requests, model requests per task, the engine's
    queue, batches and prompt pool, and the jobs in the database."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _shared_limits(shared: SharedLimits | None) -> Literal["off", "up", "down"]:
    # Redis down is not "degraded": requests are still served, each process limiting on its own
    if shared is None:
        return "off"
    try:
        return "up" if await asyncio.wait_for(asyncio.to_thread(shared.ping), PING_SECONDS) else "down"
    except TimeoutError:
        return "down"


def _ping(request: Request) -> None:
    with request.app.state.read_session_factory() as session:
        session.execute(text("SELECT 1"))


def _sees_details(request: Request) -> bool:
    try:
        principal = identify(request)
    except AppError:  # a bad or revoked key still learns whether the service is up, nothing more
        return False
    return principal is not None and "admin" in principal.scopes

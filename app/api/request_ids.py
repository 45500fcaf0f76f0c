"""Every request gets an id: the caller's X-Request-ID when it is a sane one, else a new one. It is sent back as the
X-Request-ID response header, and every log line written while the request is handled carries it (JSON logs:
app/logs.py). Each request is measured once here (route template, status, seconds), for one access line and for the
Prometheus counters (app/api/metrics.py)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.admission import MODEL_PATHS
from app.api.metrics import Metrics
from app.logs import request_id

HEADER = "x-request-id"
ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's id is kept only if it cannot forge a log line
log = logging.getLogger("promptbank.access")


def route_template(scope: Scope) -> str:
    """The route's template (not its path: ids would make unbounded series); a model request refused on arrival
    (Admission) never reached the router, so its path is its route."""
    route = getattr(scope.get("route"), "path", None)
    return route or (scope["path"] if scope["path"] in MODEL_PATHS else "unmatched")


class RequestIds:
    """ASGI middleware, outermost: the request id, the access line and the request's metrics."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None = None) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == HEADER.encode()), "")
        rid = given if ACCEPTED.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds, route = time.perf_counter() - started, route_template(scope)
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, status, seconds, scope.get("state") or {})
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                },
            )
            request_id.reset(token)

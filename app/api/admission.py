"""Admission for the model's endpoints, before a request waits anywhere.

A request to /v1/infer or /v1/embed is counted the moment it arrives, on the event loop: past
max_inflight_requests it gets 503 `overloaded` at once (it would otherwise wait for a worker thread, unseen by the
engine's queue limit and its own timeout). An admitted request carries its arrival time (its timeout counts from
there, thread-pool wait included) and an event set when its client disconnects, which cancels its work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.openai_errors import is_openai_path, openai_error_body

MODEL_PATHS = frozenset({"/v1/infer", "/v1/embed", "/v1/completions", "/v1/chat/completions"})
ARRIVED = "promptbank_arrived"  # keys in the request's state (request.state.<key>)
DISCONNECTED = "promptbank_disconnected"


class Admission:
    """ASGI middleware: bounded in-flight model requests, arrival times, disconnect events."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app, self.limit = app, limit
        self.in_flight = 0  # only touched on the event loop
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in MODEL_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.rejected += 1
            message = (
                f"{self.in_flight} model requests are in flight (limit {self.limit}, "
                "PROMPTBANK_MAX_INFLIGHT_REQUESTS); retry shortly"
            )
            if is_openai_path(scope["path"]):
                body = openai_error_body(503, "overloaded", message)
            else:
                body = {"error": {"code": "overloaded", "message": message}}
            await JSONResponse(body, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)
            return
        disconnected = threading.Event()
        state: dict[str, Any] = scope.setdefault("state", {})
        state[ARRIVED], state[DISCONNECTED] = time.monotonic(), disconnected
        watcher: asyncio.Task[None] | None = None
        gone = asyncio.Event()

        async def watch() -> None:
            # After the body, the next message the server sends is the disconnect (or the end of the response).
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            gone.set()

        async def receive_body() -> Message:
            nonlocal watcher
            if watcher is not None:  # the body was read: whoever asks again waits for the disconnect
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        self.in_flight += 1
        try:
            await self.app(scope, receive_body, send)
        finally:
            self.in_flight -= 1
            if watcher is not None:
                watcher.cancel()

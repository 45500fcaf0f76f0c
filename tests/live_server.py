"""The app served by a real uvicorn server on a free localhost port, in a thread of the test process (so it can
serve the in-process tiny model): for clients that need real HTTP, such as the OpenAI client's streaming."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

ADMIN_KEY = "pb_live-admin-key-for-tests-0123456789"  # the live server's PROMPTBANK_ADMIN_KEY


@contextmanager
def serve(app: FastAPI, timeout: float = 30.0) -> Iterator[str]:
    """Serve app until the block ends; yields its base URL (http://127.0.0.1:PORT)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "the live server exited before it started"
        assert time.monotonic() < deadline, f"the live server did not start in {timeout} s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def sse_events(response: Any) -> Iterator[dict[str, str]]:
    """Server-sent events of a streaming httpx response, as dicts of their fields (event, id, data)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        if line.startswith(":"):  # a comment (keep-alive ping)
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        event[name] = event[name] + "\n" + value if name in event else value
    if event:
        yield event

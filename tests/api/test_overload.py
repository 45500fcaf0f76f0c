"""Bounded work per model request: admission before any wait, a cap on input length and on work, and work
cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.api.admission import ARRIVED, DISCONNECTED, Admission
from tests.api.helpers import train_task


def _scope(path: str = "/v1/infer", body: bytes = b"{}") -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "http_version": "1.1",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }


def _receiver(body: bytes, then_disconnect: bool) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then_disconnect:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    return receive


async def _call(app: Any, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], bytes]:
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_model_requests_past_the_in_flight_limit_are_refused_before_they_wait() -> None:
    release = asyncio.Event()
    seen: list[Scope] = []

    async def engine(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    admission = Admission(engine, limit=1)

    async def scenario() -> None:
        first = asyncio.create_task(_call(admission, _scope(), _receiver(b"{}", False)))
        while not seen:
            await asyncio.sleep(0)
        status, headers, body = await _call(admission, _scope(), _receiver(b"{}", False))
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "overloaded"
        release.set()
        assert (await first)[0] == 200
        assert admission.in_flight == 0 and admission.rejected == 1
        status, _, _ = await _call(admission, _scope(), _receiver(b"{}", False))
        assert status == 200

    asyncio.run(scenario())
    assert isinstance(seen[0]["state"][ARRIVED], float)


def test_a_disconnect_after_the_body_sets_the_requests_cancel_event() -> None:
    events: list[Any] = []

    async def engine(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        events.append(scope["state"][DISCONNECTED])
        for _ in range(100):
            if scope["state"][DISCONNECTED].is_set():
                break
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asyncio.run(_call(Admission(engine, limit=4), _scope(), _receiver(b"{}", True)))
    assert events[0].is_set()


def test_a_request_whose_client_left_is_not_computed(client: TestClient) -> None:
    train_task(client)
    body = json.dumps({"task": "sentiment", "inputs": ["good film"] * 8}).encode()
    status, _, answer = asyncio.run(_call(client.app, _scope(body=body), _receiver(body, True)))
    assert status == 503 and json.loads(answer)["error"]["code"] == "cancelled"
    stats = client.get("/v1/stats").json()["engine"]
    assert stats["cancelled_requests"] == 1
    assert client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good film"]}).status_code == 200


def test_inputs_and_work_beyond_the_caps_are_refused_before_any_model_work(
    client_with: Callable[..., TestClient],
) -> None:
    client = client_with(max_input_chars=50, max_request_tokens=400)
    train_task(client)
    long = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good", "x" * 51]})
    assert long.status_code == 422 and long.json()["error"]["code"] == "input_too_long"
    assert long.json()["error"]["details"] == {"index": 1, "characters": 51, "limit": 50}
    many = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good film, truly"] * 60})
    assert many.status_code == 422 and many.json()["error"]["code"] == "request_too_large"
    assert many.json()["error"]["details"]["tokens"] > 400
    stats = client.get("/v1/stats").json()["engine"]
    assert stats["queued_rows"] == 0
    assert client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good film"] * 4}).status_code == 200

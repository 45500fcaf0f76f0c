"""Request ids and JSON logs: every response carries X-Request-ID (the caller's when it is sane), and the log lines
written while a request is handled are JSON objects that carry the same id."""

from __future__ import annotations

import io
import json
import logging
import re

from fastapi.testclient import TestClient

from app.logs import configure_logging


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    for response in (client.get("/healthz"), client.get("/v1/tasks/nope"), client.post("/v1/tasks", content=b"{")):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.headers
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"}).headers["x-request-id"] == "trace-42.a:b"
    for forged in ("two words", "x" * 129, "line\\nbreak"):
        echoed = client.get("/healthz", headers={"X-Request-ID": forged}).headers["x-request-id"]
        assert echoed != forged and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_log_lines_are_json_with_the_request_id(client: TestClient) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream)
    try:
        response = client.get("/v1/tasks/nope", headers={"X-Request-ID": "req-7"})
        assert response.status_code == 404
        logging.getLogger("outside").info("no request here")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "promptbank.access"]
    assert access, lines
    assert access[-1]["request_id"] == "req-7" and access[-1]["status"] == 404
    assert access[-1]["route"] == "/v1/tasks/{task}" and access[-1]["method"] == "GET" and access[-1]["ms"] >= 0
    assert {"time", "level", "message"} <= set(access[-1])
    outside = [line for line in lines if line["logger"] == "outside"]
    assert outside[-1]["request_id"] is None and outside[-1]["message"] == "no request here"

"""Request ids and JSON logs: every response carries X-Request-ID (the caller's when it is sane), the log lines
written while a request is handled are JSON objects that carry the same id, and a server started as the README says
writes one access line per request (the app's, not uvicorn's as well)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
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


@pytest.mark.parametrize("command", ["promptbank serve", "uvicorn app.main:app"])
def test_a_server_started_as_the_readme_says_logs_each_request_once(tmp_path: Path, command: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = {
        "promptbank serve": [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        "uvicorn app.main:app": [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
    }[command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBANK_")}
    env.update(PROMPTBANK_DATA_DIR=str(tmp_path), PROMPTBANK_LOAD_MODEL="false", PROMPTBANK_RUN_WORKER="false")
    output = (tmp_path / "server.log").open("w+")
    server = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            for i in range(3):
                response = http.get(f"/v1/tasks/probe-{i}", headers={"X-Request-ID": f"probe-{i}"})
                assert response.status_code == 404
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        output.close()
    lines = (tmp_path / "server.log").read_text().splitlines()
    for i in range(3):
        mentions = [line for line in lines if f"/v1/tasks/probe-{i}" in line]
        assert len(mentions) == 1, mentions  # ours, and not uvicorn's as well
        access = json.loads(mentions[0])
        assert access["logger"] == "promptbank.access" and access["request_id"] == f"probe-{i}"

"""Crash tests: kill -9 a `python -m workers` process at several moments of a job, SIGTERM one mid-job, and the
API killed mid-upload.

Real processes on the real database (SQLite and PostgreSQL): after every kill nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import create_dataset, create_task, toy_examples
from tests.workers.slow_jobs import slow_meta_init

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_TIMEOUT = 2.0  # how long the next worker waits before it takes the dead worker's job back
STEPS = 60
# Long validation inputs: the validations at step 0 and after the last step take long enough (a few tenths of a
# second on a fast CPU) to be seen between two polls.
VALIDATION_EXAMPLES = 500
START_TIMEOUT = 90.0  # a process start imports torch: seconds on a busy 2-core runner
UPLOAD_EXAMPLES = 4000

Job = dict[str, Any]


# --- processes --------------------------------------------------------------------------------------------


def child_env(database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The test's environment without its PROMPTBANK_* variables, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBANK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.update(
        PROMPTBANK_DATABASE_URL=database_url,
        PROMPTBANK_DATA_DIR=str(data_dir),
        PROMPTBANK_AUTO_MIGRATE="false",
        **{f"PROMPTBANK_{key.upper()}": value for key, value in settings.items()},
    )
    return env


def worker_env(database_url: str, tmp_path: Path, model_dir: Path, **settings: str) -> dict[str, str]:
    """A `python -m workers` child on the tiny model that polls and beats every 50 ms (progress is seen within
    50 ms of a step), plus these settings."""
    return child_env(
        database_url,
        tmp_path / "data",
        model_path=str(model_dir),
        device="cpu",
        worker_poll_seconds="0.05",
        heartbeat_seconds="0.05",
        **settings,
    )


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextmanager
def child(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Python child process, its output in log; it is killed and reaped however the block ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # cwd outside the repository: a developer's .env must not leak in
        proc = subprocess.Popen([sys.executable, *args], cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """kill -9, then reap, so the next assertion sees whatever the dead process left behind."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- a worker killed mid-job ------------------------------------------------------------------------------


def prompts_of(client: TestClient, task: str, job_id: int) -> list[dict[str, Any]]:
    response = client.get("/v1/prompts", params={"task": task, "limit": 100})
    assert response.status_code == 200, response.text
    return [p for p in response.json() if p["job_id"] == job_id]


def wait_for(
    client: TestClient, job_id: int, reached: Callable[[Job], bool], proc: subprocess.Popen[bytes], log: Path
) -> Job:
    """Poll the job until reached(job); fail if it ends first, the worker dies, or nothing happens in time."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: Job = response.json()
        if reached(job):
            return job
        assert job["status"] in ("queued", "running"), f"the job ended before the kill: {job}"
        assert proc.poll() is None, f"the worker exited on its own ({proc.returncode}):\n{log_tail(log)}"
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached the moment in {START_TIMEOUT} s: {job}\n{log_tail(log)}")


def evaluated_by_last_attempt(client: TestClient, job_id: int) -> list[int]:
    """The steps the latest attempt evaluated: each is logged before the attempt trains past it."""
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()
    last_start = max(i for i, e in enumerate(events) if e["kind"] == "started")
    return [e["data"]["step"] for e in events[last_start:] if e["kind"] == "metrics"]


def attempt_at(attempt: int, reached: Callable[[Job], bool]) -> Callable[[Job], bool]:
    return lambda job: job["status"] == "running" and job["attempts"] == attempt and reached(job)


# Each attempt's worker is killed at a later moment. (moment; when to kill it, from the progress polled; what
# proves the kill came at that moment, from the progress seen and the steps evaluated: the job validates at step 0,
# before training, and at its last step, before storing.) That nothing was stored is checked for every kill.
MOMENTS: list[tuple[str, Callable[[Job], bool], Callable[[Job, list[int]], bool]]] = [
    ("after the claim, before any step", lambda job: True, lambda job, evaluated: evaluated == []),
    (
        "mid-training",
        lambda job: job["progress"]["step"] >= STEPS // 3,
        lambda job, evaluated: evaluated == [0] and job["progress"]["step"] < STEPS,
    ),
    (
        "after the last step, before storing",
        lambda job: job["progress"]["step"] == STEPS,
        lambda job, evaluated: evaluated[:1] == [0],
    ),
]


def test_a_job_outlives_workers_killed_after_the_claim_mid_training_and_after_the_last_step(
    client_with: Callable[..., TestClient], database_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # One attempt per kill, and one to finish: a worker is started for each, on the same database.
    client = client_with(run_worker=False, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT, max_job_attempts=4)
    create_task(client, "crash")
    train = create_dataset(client, toy_examples(40))
    long = [{**e, "input": " ".join([e["input"]] * 4)} for e in toy_examples(VALIDATION_EXAMPLES, seed=1)]
    val = create_dataset(client, long, name="val")
    hyper = {
        "num_virtual_tokens": 4,
        "steps": STEPS,
        "batch_size": 4,
        "eval_every": STEPS,
        "warmup_steps": 0,
        "max_validation_examples": VALIDATION_EXAMPLES,
    }
    body = {"type": "train", "task": "crash", "dataset_id": train["id"], "validation_dataset_id": val["id"]}
    response = client.post("/v1/jobs", json={**body, "hyperparameters": hyper})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    env = worker_env(database_url, tmp_path, tiny_model_dir, heartbeat_timeout_seconds=str(HEARTBEAT_TIMEOUT))

    for attempt, (moment, reached, proof) in enumerate(MOMENTS, start=1):
        log = tmp_path / "logs" / f"worker-{attempt}.log"
        # The previous attempt's row stays "running" until this worker finds its heartbeat stale and requeues it.
        with child(["-m", "workers"], env, log) as worker:
            seen = wait_for(client, job_id, attempt_at(attempt, reached), worker, log)
            kill(worker)
        dead = client.get(f"/v1/jobs/{job_id}").json()
        assert dead["status"] == "running" and dead["attempts"] == attempt, f"killed {moment}: {dead}"
        assert prompts_of(client, "crash", job_id) == [], f"a worker killed {moment} stored a prompt"
        evaluated = evaluated_by_last_attempt(client, job_id)
        assert proof(seen, evaluated), f"not killed {moment}: saw {seen['progress']}, evaluated steps {evaluated}"

    log = tmp_path / "logs" / "worker-last.log"
    with child(["-m", "workers"], env, log) as worker:
        finished = wait_for(client, job_id, lambda job: job["status"] in ("succeeded", "failed"), worker, log)
    assert finished["status"] == "succeeded", f"{finished}\n{log_tail(log)}"
    assert finished["attempts"] == len(MOMENTS) + 1
    assert finished["progress"]["step"] == STEPS
    [prompt] = prompts_of(client, "crash", job_id)  # exactly one version, however many attempts died
    assert prompt["version"] == 1 and prompt["active"]
    assert finished["result_prompt_id"] == prompt["id"]
    assert client.get("/v1/tasks/crash").json()["active_prompt_id"] == prompt["id"]
    assert [job["id"] for job in client.get("/v1/jobs", params={"task": "crash"}).json()] == [job_id]
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()
    lifecycle = [e["kind"] for e in events if e["kind"] in ("started", "requeued", "succeeded", "failed")]
    assert lifecycle == ["started", "requeued"] * len(MOMENTS) + ["started", "succeeded"]
    assert [e["data"]["attempt"] for e in events if e["kind"] == "started"] == [1, 2, 3, 4]


# --- a worker stopped mid-job ---------------------------------------------------------------------------

SIGTERM_REQUEUE_WITHIN = 2.0  # seconds from SIGTERM to the job's requeued event: its outer steps take far longer
SIGTERM_EXIT_WITHIN = 10.0  # to the process's exit: Python's own teardown takes about 2 s on a busy 2-core runner


def test_sigterm_mid_outer_step_requeues_the_job_and_the_worker_exits_within_seconds(
    client_with: Callable[..., TestClient], database_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = client_with(run_worker=False)
    job_id = slow_meta_init(client)["id"]
    env = worker_env(database_url, tmp_path, tiny_model_dir)
    log = tmp_path / "logs" / "worker.log"
    with child(["-m", "workers"], env, log) as worker:
        # Evaluated at step 0: the worker is inside outer step 1 (tests/workers/slow_jobs.py).
        wait_for(client, job_id, lambda job: job["progress"].get("val_loss") is not None, worker, log)
        signalled = datetime.now(UTC)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=SIGTERM_EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker still ran {SIGTERM_EXIT_WITHIN} s after SIGTERM:\n{log_tail(log)}"
            ) from None
    assert code == 0, f"exit status {code} after {time.monotonic() - started:.1f} s:\n{log_tail(log)}"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 0, job
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    assert events[-1]["kind"] == "requeued" and "shutting down" in events[-1]["message"], events
    requeued = datetime.fromisoformat(events[-1]["created_at"]) - signalled
    assert requeued.total_seconds() < SIGTERM_REQUEUE_WITHIN, f"requeued {requeued} after SIGTERM"
    # Cut short inside outer step 1: the step never finished.
    assert [point["step"] for point in client.get(f"/v1/jobs/{job_id}/metrics").json()] == [0]


# --- the API killed mid-upload ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`uvicorn app.main:app` on a free port, once /healthz answers; (process, port)."""
    port = free_port()
    args = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with child(args, env, log) as proc:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"the API exited ({proc.returncode}):\n{log_tail(log)}"
            assert time.monotonic() < deadline, f"the API did not start in {START_TIMEOUT} s:\n{log_tail(log)}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield proc, port


def jsonl(n: int, seed: int) -> bytes:
    return "".join(json.dumps(example) + "\n" for example in toy_examples(n, seed=seed)).encode()


def multipart(name: str, data: bytes) -> tuple[str, bytes]:
    """(content type, body) of a form with the dataset's name and its JSONL file."""
    boundary = "crash-test-boundary-7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return f"multipart/form-data; boundary={boundary}", head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


def open_upload(port: int, content_type: str, body: bytes, *, chunked: bool, sent: float) -> socket.socket:
    """POST /v1/datasets on a raw socket, sending only the first `sent` share of the body."""
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n{length}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode())
    part = body[: int(len(body) * sent)]
    for start in range(0, len(part), 16384):  # in pieces, as a slow client would
        piece = part[start : start + 16384]
        sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
    if chunked and sent >= 1:
        sock.sendall(b"0\r\n\r\n")
    return sock


def datasets_of(port: int) -> list[dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}/v1/datasets", params={"limit": 100}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_an_api_killed_mid_upload_stores_no_dataset_or_a_whole_one(
    database_url: str, db_engine: Engine, tmp_path: Path
) -> None:
    env = child_env(database_url, tmp_path / "data", load_model="false", run_worker="false")
    data = jsonl(UPLOAD_EXAMPLES, seed=2)
    with api_server(env, tmp_path / "logs" / "api-1.log") as (first, port):
        # two uploads half way through their bodies: a multipart file and a chunked JSON body
        content_type, body = multipart("half-multipart", data)
        halves = [open_upload(port, content_type, body, chunked=False, sent=0.5)]
        examples = [json.loads(line) for line in data.splitlines()]
        json_body = json.dumps({"name": "half-json", "examples": examples}).encode()
        halves.append(open_upload(port, "application/json", json_body, chunked=True, sent=0.5))
        time.sleep(0.5)  # the server has read what was sent and waits for the rest
        for sock in halves:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):  # no answer yet: the server is still reading the body
                sock.recv(1)
        kill(first)
    for sock in halves:
        sock.close()

    with api_server(env, tmp_path / "logs" / "api-2.log") as (second, port):
        assert datasets_of(port) == [], "a dataset was stored from an upload cut short by a crash"
        content_type, body = multipart("complete", data)
        started = time.monotonic()
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/datasets", content=body, headers={"content-type": content_type}, timeout=60
        )
        took = time.monotonic() - started
        assert response.status_code == 201, response.text
        assert response.json()["num_examples"] == UPLOAD_EXAMPLES
        # The whole body sent, then killed about half way through what the server does with it (read, parse,
        # store, answer): the dataset is either all there or not there.
        content_type, body = multipart("late", data)
        late = open_upload(port, content_type, body, chunked=False, sent=1.0)
        time.sleep(took / 2)
        kill(second)
    late.close()

    with api_server(env, tmp_path / "logs" / "api-3.log") as (_third, port):
        stored = datasets_of(port)
        names = sorted(d["name"] for d in stored)
        assert names in (["complete"], ["complete", "late"]), names
        assert all(d["num_examples"] == UPLOAD_EXAMPLES for d in stored), stored
        for dataset in stored:
            detail = httpx.get(f"http://127.0.0.1:{port}/v1/datasets/{dataset['id']}", timeout=30)
            assert detail.status_code == 200 and detail.json()["preview"] == examples[:5], detail.text

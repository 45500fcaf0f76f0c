"""(e) http: promptbank as a user sees it, `uvicorn app.main:app` in a subprocess, POST /v1/infer per request.

The server gets a fresh SQLite database in a temporary directory and reuses the converted model in the data
directory (so its model identity matches the prompts stored here). Tasks are created through POST /v1/tasks;
their random prompts are written straight into that database with services.prompts.store_prompt, as a finished
training job would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import torch

from app.db.session import make_engine, make_session_factory
from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.services.prompts import store_prompt
from bench.sentiment import free_port, wait_healthy
from bench.serving_runners import RoundResult, closed_loop
from bench.serving_workload import Request, Scores


def store_prompts(database_url: str, frozen: FrozenModel, prompts: dict[int, torch.Tensor]) -> None:
    """Store each task's plain prompt as its active version, as a finished training job would."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            for task_id, prompt in prompts.items():
                store_prompt(
                    session,
                    tenant="default",
                    task_id=task_id,
                    artifact=Artifact("prompt", {"prompt": prompt}),
                    positions=int(prompt.shape[0]),
                    width=int(prompt.shape[1]),
                    identity=frozen.identity,
                    metrics={},
                    hyperparameters={},
                    job_id=None,
                    dataset_id=None,
                )
    finally:
        engine.dispose()


class HttpService:
    """A promptbank server with one task per prompt (named bench-<number>), for the life of a `with` block."""

    def __init__(
        self,
        frozen: FrozenModel,
        prompts: list[torch.Tensor],
        spec: TaskSpec,
        data_dir: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.frozen, self.prompts, self.spec, self.data_dir = frozen, prompts, spec, data_dir
        self.extra_env = extra_env or {}
        self._tmp = tempfile.TemporaryDirectory(prefix="promptbank-serving-")
        self.database_url = f"sqlite:///{Path(self._tmp.name) / 'serving.db'}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.health: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> None:
        """Launch the server; returns at once (it loads the model in the background), see wait_ready."""
        env = {
            **os.environ,
            "PROMPTBANK_DATA_DIR": self.data_dir,
            "PROMPTBANK_DATABASE_URL": self.database_url,
            "PROMPTBANK_RUN_WORKER": "false",  # nothing to train; an idle worker would only poll the database
            "PROMPTBANK_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(self.port)]
        self.server = subprocess.Popen([*command, "--log-level", "warning", "--no-access-log"], env=env)

    def wait_ready(self) -> None:
        """Wait for /healthz, create the tasks and store their prompts."""
        assert self.server is not None
        with httpx.Client(base_url=self.base_url, timeout=600) as client:
            self.health = wait_healthy(client, self.server)
            task_ids = []
            for number in range(len(self.prompts)):
                body = {
                    "name": self.task_name(number),
                    "kind": self.spec.kind,
                    "labels": list(self.spec.labels),
                    "template": self.spec.template,
                }
                response = client.post("/v1/tasks", json=body)
                if response.status_code != 201:
                    raise SystemExit(f"POST /v1/tasks: {response.status_code} {response.text}")
                task_ids.append(int(response.json()["id"]))
        store_prompts(self.database_url, self.frozen, dict(zip(task_ids, self.prompts, strict=True)))

    @staticmethod
    def task_name(number: int) -> str:
        return f"bench-{number}"

    def run(self, requests: list[Request], concurrency: int) -> RoundResult:
        """c client threads over one connection pool, one input per POST /v1/infer."""
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=self.base_url, timeout=600, limits=limits) as client:

            def call(request: Request) -> Scores:
                body = {"task": self.task_name(request.task), "inputs": [request.text]}
                response = client.post("/v1/infer", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"POST /v1/infer: {response.status_code} {response.text}")
                return {str(label): float(p) for label, p in response.json()["outputs"][0]["scores"].items()}

            before = self._engine_counts(client)
            result = closed_loop(requests, concurrency, call)
            after = self._engine_counts(client)
        if before is None or after is None or after[0] == before[0]:
            return result
        rows_per_batch = (after[1] - before[1]) / (after[0] - before[0])
        return RoundResult(result.wall, result.latencies, result.outputs, rows_per_batch)

    def pool_stats(self) -> dict[str, Any]:
        """The server's prompt pool counters from GET /v1/stats (empty if it reports none)."""
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            response = client.get("/v1/stats")
        if response.status_code != 200:
            return {}
        return dict((response.json().get("engine") or {}).get("pool") or {})

    @staticmethod
    def _engine_counts(client: httpx.Client) -> tuple[int, int] | None:
        """(batches, rows) served so far, from GET /v1/stats; None if the server has no such endpoint."""
        response = client.get("/v1/stats")
        if response.status_code != 200:
            return None
        engine = response.json().get("engine") or {}
        if "batches" not in engine or "rows" not in engine:
            return None
        return int(engine["batches"]), int(engine["rows"])

    def __enter__(self) -> HttpService:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and remove its database."""
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self._tmp.cleanup()

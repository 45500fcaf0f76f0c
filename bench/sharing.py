"""Processes that share a host, measured: `python -m bench.sharing` (localhost only, bounded in time).

The layouts of the README ("Processes and threads on one host"), each in a fresh setup: a promptbank server
(uvicorn, fresh SQLite, the bundled SmolLM2, random 20-token prompts for 4 classification tasks) and standalone
`python -m workers` processes sharing its database, with their default thread budgets unless a layout says
otherwise. Training: prompt tuning (20 tokens, batch 8) on 200 Rotten Tomatoes snippets, jobs long enough to outlast
the window and cancelled after it. Serving: --clients closed-loop clients, each sending one-snippet classification
requests to the 4 tasks in turn.

Each layout warms up (every job past its first steps, the clients running), then measures --window seconds:
a job's step time from its own metrics (GET /v1/jobs/{id}/metrics, steps that ran inside the window) and the
clients' requests that started and ended inside it (latency p50/p99, requests/s).

Layouts (--layouts, comma separated):
  worker_alone            one worker training, nothing else
  worker_alone_all_cores  the same with PROMPTBANK_TORCH_THREADS=<cores> (the worker's budget is half the cores)
  two_workers             two workers training            (a): total steps/s >= 0.9x worker_alone
  serving_idle            the clients against an idle engine
  serving_inprocess       the clients while the API's own worker thread trains  (b): p99 <= 2x idle, rps >= 0.5x
  serving_beside_worker   the clients while one worker trains beside the API    (b): the same targets
  layout                  the clients while two workers train            (c): every process >= 0.8x its fair share
  layout_passive          layout with the API under OMP_WAIT_POLICY=PASSIVE   (d)
  layout_unbudgeted       layout with workers as they ran before budgets: every core, ACTIVE, niceness 0
  serving_idle_passive, serving_beside_worker_passive
                          the API under OMP_WAIT_POLICY=PASSIVE, idle and beside one worker
  serving_beside_worker_nice0, layout_nice0, layout_passive_nice0
                          workers at niceness 0 (PROMPTBANK_TRAINING_NICE=0) instead of the default

Fair share with 3 busy processes on the cores: a third of each one's speed when alone on every core, i.e. a
worker's step at most 3 / 0.8 = 3.75x worker_alone_all_cores (not worker_alone, which has half the cores), the
API's requests/s at least 0.8 / 3 = 0.27x serving_idle. The report (bench/sharing_report.py) gives every target a
verdict per layout. Figures go to stdout and --out (JSON, and .md beside it). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import TaskSpec
from app.engine.formats.bundled import ensure_bundled_model
from app.threads import cpu_count
from bench.data import balanced_splits
from bench.overload import percentile
from bench.serving_http import HttpService
from bench.sharing_report import report

SENTIMENT = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
SERVED_TASKS = 4


@dataclass(frozen=True)
class Layout:
    workers: int = 0
    clients: bool = False
    inprocess: bool = False  # the API's own worker thread trains one job
    server_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)


def layouts(cores: int) -> dict[str, Layout]:
    unbudgeted = {"PROMPTBANK_TORCH_THREADS": str(cores), "OMP_WAIT_POLICY": "ACTIVE", "PROMPTBANK_TRAINING_NICE": "0"}
    passive, nice0 = {"OMP_WAIT_POLICY": "PASSIVE"}, {"PROMPTBANK_TRAINING_NICE": "0"}
    return {
        "worker_alone": Layout(workers=1),
        "worker_alone_all_cores": Layout(workers=1, worker_env={"PROMPTBANK_TORCH_THREADS": str(cores)}),
        "two_workers": Layout(workers=2),
        "serving_idle": Layout(clients=True),
        "serving_inprocess": Layout(clients=True, inprocess=True),
        "serving_beside_worker": Layout(workers=1, clients=True),
        "layout": Layout(workers=2, clients=True),
        "layout_passive": Layout(workers=2, clients=True, server_env=passive),
        "layout_unbudgeted": Layout(workers=2, clients=True, worker_env=unbudgeted),
        "serving_idle_passive": Layout(clients=True, server_env=passive),
        "serving_beside_worker_passive": Layout(workers=1, clients=True, server_env=passive),
        "serving_beside_worker_nice0": Layout(workers=1, clients=True, worker_env=nice0),
        "layout_nice0": Layout(workers=2, clients=True, worker_env=nice0),
        "layout_passive_nice0": Layout(workers=2, clients=True, server_env=passive, worker_env=nice0),
    }


def check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


class Clients:
    """Closed-loop clients on the event loop of a background thread; each request's (start, seconds) is kept."""

    def __init__(self, base_url: str, clients: int, texts: list[str]) -> None:
        self.base_url, self.clients, self.texts = base_url, clients, texts
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._future: Any = None
        self._stopped = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._future = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=300, limits=limits) as client:

            async def one(number: int) -> None:
                sent = 0
                while not self._stop.is_set():
                    task = (number + sent) % SERVED_TASKS
                    text = self.texts[(number * 97 + sent) % len(self.texts)]
                    sent += 1
                    started = time.perf_counter()
                    response = await client.post("/v1/infer", json={"task": f"bench-{task}", "inputs": [text]})
                    if response.status_code != 200:
                        self.errors.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    self.samples.append((started, time.perf_counter() - started))

            await asyncio.gather(*(one(number) for number in range(self.clients)))

    def stop(self) -> None:
        """Stop the clients and wait for them (a second call does nothing)."""
        if self._future is None or self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._stop.set)
        self._future.result(timeout=600)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def window(self, began: float, ended: float) -> dict[str, Any]:
        latencies = [seconds * 1000 for start, seconds in self.samples if start >= began and start + seconds <= ended]
        return {
            "requests": len(latencies),
            "rps": len(latencies) / (ended - began),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
        }


def start_worker(database_url: str, data_dir: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {
        **os.environ,
        "PROMPTBANK_DATA_DIR": data_dir,
        "PROMPTBANK_DATABASE_URL": database_url,
        "PROMPTBANK_WORKER_PACK_JOBS": "1",  # one job per worker: each process trains its own
        "PROMPTBANK_HEARTBEAT_SECONDS": "1",
        "PROMPTBANK_WORKER_POLL_SECONDS": "0.5",
        "PROMPTBANK_LOG_LEVEL": "WARNING",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "workers"], env=full, stdout=out, stderr=subprocess.STDOUT)


def queue_jobs(client: httpx.Client, count: int, train: list[dict[str, str]], args: argparse.Namespace) -> list[int]:
    check(
        client.post(
            "/v1/tasks",
            json={
                "name": "learn",
                "kind": "classification",
                "labels": list(SENTIMENT.labels),
                "template": SENTIMENT.template,
            },
        )
    )
    lines = "\n".join(json.dumps(example) for example in train).encode()
    dataset = check(client.post("/v1/datasets", files={"file": ("rt-train.jsonl", lines)}))
    hyper = {
        "method": "prompt",
        "num_virtual_tokens": 20,
        "steps": 100_000,
        "batch_size": args.batch_size,
        "eval_every": 100_000,
        "seed": 0,
    }
    jobs = []
    for _ in range(count):
        job = check(
            client.post("/v1/jobs", json={"task": "learn", "dataset_id": dataset["id"], "hyperparameters": hyper})
        )
        jobs.append(int(job["id"]))
    return jobs


def wait_for(condition: Any, what: str, timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def steps(client: httpx.Client, job_ids: list[int]) -> dict[int, int]:
    return {job_id: int(check(client.get(f"/v1/jobs/{job_id}"))["progress"]["step"]) for job_id in job_ids}


def step_seconds(client: httpx.Client, job_id: int, first: int, last: int) -> dict[str, Any]:
    """Mean seconds per step over steps first+1 .. last of the job's first attempt, from its metrics."""

    def points() -> dict[int, float] | None:
        rows = check(client.get(f"/v1/jobs/{job_id}/metrics"))
        found = {int(row["step"]): float(row["seconds"]) for row in rows if row["attempt"] == 1}
        return found if first in found and last in found else None

    found = wait_for(points, f"metrics of job {job_id} up to step {last}", 60)
    return {"steps": last - first, "seconds_per_step": (found[last] - found[first]) / max(1, last - first)}


def run_layout(name: str, layout: Layout, frozen: FrozenModel, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    prompts = [torch.randn(20, frozen.hidden_size) * 0.02 for _ in range(SERVED_TASKS)]
    train, test = balanced_splits(200, 200, seed=0)
    server_env = {
        "PROMPTBANK_HEARTBEAT_SECONDS": "1",
        "PROMPTBANK_WORKER_POLL_SECONDS": "0.5",
        **({"PROMPTBANK_RUN_WORKER": "true"} if layout.inprocess else {}),
        **layout.server_env,
    }
    workers: list[subprocess.Popen[bytes]] = []
    clients: Clients | None = None
    log = Path(tempfile.mkdtemp(prefix="promptbank-sharing-")) / "workers.log"
    print(f"[{name}] starting", flush=True)
    with HttpService(frozen, prompts, SENTIMENT, args.data_dir, extra_env=server_env) as service:
        service.start()
        service.wait_ready()
        try:
            with httpx.Client(base_url=service.base_url, timeout=120) as client:
                trainers = layout.workers + (1 if layout.inprocess else 0)
                job_ids = queue_jobs(client, trainers, train, args) if trainers else []
                workers = [
                    start_worker(service.database_url, args.data_dir, layout.worker_env, log)
                    for _ in range(layout.workers)
                ]
                if layout.clients:
                    clients = Clients(service.base_url, args.clients, [example["input"] for example in test])
                    clients.start()
                if job_ids:
                    wait_for(
                        lambda: all(step >= args.warmup_steps for step in steps(client, job_ids).values()),
                        "every job past its warm-up steps",
                        600,
                    )
                else:
                    time.sleep(args.warmup_seconds)
                first, began = steps(client, job_ids), time.perf_counter()
                time.sleep(args.window)
                last, ended = steps(client, job_ids), time.perf_counter()
                if clients is not None:
                    clients.stop()
                result: dict[str, Any] = {"window_s": ended - began}
                if job_ids:
                    result["jobs"] = [step_seconds(client, job_id, first[job_id], last[job_id]) for job_id in job_ids]
                    result["steps_per_s"] = sum(1 / job["seconds_per_step"] for job in result["jobs"])
                if clients is not None:
                    result["serving"] = clients.window(began, ended)
                    result["serving"]["errors"] = clients.errors[:5]
                for job_id in job_ids:
                    client.post(f"/v1/jobs/{job_id}/cancel")
        finally:
            if clients is not None:
                clients.stop()
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", type=lambda text: [n for n in text.split(",") if n], default=list(layouts(2)))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=float, default=45)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--warmup-seconds", type=float, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/sharing.json")
    args = parser.parse_args()
    cores = cpu_count()
    known = layouts(cores)
    unknown = [name for name in args.layouts if name not in known]
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; choose from {', '.join(known)}")
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    figures: dict[str, Any] = {"args": vars(args), "cores": cores, "layouts": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.layouts:
        figures["layouts"][name] = run_layout(name, known[name], frozen, args)
        out.write_text(json.dumps(figures, indent=2))  # kept as it goes: a stopped run keeps its layouts
    text = report(figures)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

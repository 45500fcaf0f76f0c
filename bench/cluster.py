"""Faults, measured: `python -m bench.cluster` (root: network namespaces; several minutes).

Brings up a cluster with scripts/cluster.sh (PostgreSQL, Redis, --apis API hosts, --workers worker hosts, HAProxy),
uploads datasets and trains the served tasks on the worker hosts, serves every (task, input) alone once (the
reference answers), then sends an open-loop load through the balancer (--rate requests/s, each at its time) while:

1. api: kills -9 the API host that answered most, starts it again --api-down-seconds later;
2. worker: queues --jobs train jobs (distinct seeds), kills -9 the worker host of one that is mid-training, starts
   it again --worker-down-seconds later (the job's heartbeat goes silent: after --heartbeat-timeout another worker,
   or the restarted one, queues it again);
3. db: with --jobs jobs training, takes the database host's link down for --db-down-seconds, then up.

Each fault also has --jobs jobs queued just before it. Per fault: the requests due from the fault until every host is
healthy again (+ --settle s): failed (by status), wrong answers (bench/cluster_load.py says what counts), the
fault's jobs lost or trained twice (the database's rows: status, attempts, the workers that started each, prompt
versions stored), seconds from the fault's end (the restart, the link up) until `cluster.sh status` reports every
host healthy. Targets (issue 23): 0 wrong answers, 0 jobs lost or trained twice, at most 1% of requests failed during
the API kill, every host healthy within 10 s of the database's return.

Then (--affinity-tasks, 0: skip) the pool hit rate with and without task affinity (bench/cluster_affinity.py).
Figures go to stdout and --out (JSON, and .md beside it); --model-path runs it on another model (the tests' tiny one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import cluster_affinity, cluster_jobs
from bench.cluster_hosts import Cluster, free_port, namespaces_unavailable
from bench.cluster_load import OpenLoop, Sample, references
from bench.cluster_report import report, requests, targets


def served_tasks(client: httpx.Client, cluster: Cluster, args: argparse.Namespace) -> tuple[list[Sample], int]:
    """Create, upload and train the load's tasks on the worker hosts; the load's samples and a trained version."""
    names = [f"serve-{i}" for i in range(args.tasks)] + [f"write-{i}" for i in range(args.generation_tasks)]
    ids = []
    for number, name in enumerate(names):
        kind = "generation" if name.startswith("write") else "classification"
        cluster_jobs.create_task(client, name, kind)
        maker = cluster_jobs.echo_examples if kind == "generation" else cluster_jobs.toy_examples
        dataset = cluster_jobs.upload(client, f"{name}-data", maker(args.examples, seed=number))
        ids += cluster_jobs.queue(client, [(name, number)], dataset, args.train_steps)
    cluster_jobs.wait_until(lambda: cluster_jobs.all_ended(cluster, ids), args.job_timeout, "trained served tasks")
    trained = cluster_jobs.ledger(cluster, ids)
    if any(job["status"] != "succeeded" for job in trained):
        raise RuntimeError(f"a served task did not train: {trained}")
    inputs = [example["input"] for example in cluster_jobs.toy_examples(args.inputs, seed=10_000)]
    samples = [
        Sample(name, text, args.max_new_tokens if name.startswith("write") else None)
        for name in names
        for text in inputs
    ]
    first = client.get(f"/v1/jobs/{ids[0]}").json()
    return samples, int(first["result_prompt_id"])


class Scenario:
    """The faults, one after another, while the load runs; each leaves a record for the report."""

    def __init__(self, cluster: Cluster, client: httpx.Client, load: OpenLoop, args: argparse.Namespace) -> None:
        self.cluster, self.client, self.load, self.args = cluster, client, load, args
        self.faults: list[dict[str, Any]] = []
        self.jobs_dataset = 0

    def prepare_jobs(self) -> None:
        for i in range(self.args.jobs):
            cluster_jobs.create_task(self.client, f"jobs-{i}")
        examples = cluster_jobs.toy_examples(self.args.examples, seed=20_000)
        self.jobs_dataset = cluster_jobs.upload(self.client, "jobs-data", examples)

    def queue_jobs(self) -> list[int]:
        seeds = [(f"jobs-{i}", 100 * (len(self.faults) + 1) + i) for i in range(self.args.jobs)]
        return cluster_jobs.queue(self.client, seeds, self.jobs_dataset, self.args.job_steps)

    def busiest_api(self) -> str:
        answered = Counter(o.replica for o in list(self.load.outcomes)[-200:] if o.status == 200 and o.replica)
        return answered.most_common(1)[0][0] if answered else self.cluster.api_hosts[0]

    def record(
        self, kind: str, name: str, what: str, ended_by: str, began: float, ended: float, ids: list[int]
    ) -> None:
        """The fault ended at `ended`: time every host's return, wait for the fault's jobs, keep the record."""
        healthy = self.cluster.wait_healthy(self.args.healthy_timeout)
        recovered = healthy if healthy is not None else time.monotonic()
        cluster_jobs.wait_until(
            lambda: cluster_jobs.all_ended(self.cluster, ids), self.args.job_timeout, f"end of the {name} jobs"
        )
        fault: dict[str, Any] = {"kind": kind, "name": name, "what": what, "ended_by": ended_by}
        fault.update(began=began, ended=ended)
        fault["healthy_after_s"] = None if healthy is None else round(healthy - ended, 1)
        fault["until"] = recovered + self.args.settle
        fault["jobs"] = cluster_jobs.tally(cluster_jobs.ledger(self.cluster, ids), len(ids))
        self.faults.append(fault)
        time.sleep(max(0.0, fault["until"] - time.monotonic()))

    def api(self) -> None:
        host, ids = self.busiest_api(), self.queue_jobs()
        began = time.monotonic()
        self.cluster.kill(host)
        time.sleep(self.args.api_down_seconds)
        ended = time.monotonic()
        self.cluster.start(host)
        what = f"kill -9 {host} mid-load, started again {self.args.api_down_seconds:g} s later"
        self.record("api", "API host killed", what, "its restart", began, ended, ids)

    def mid_job(self, ids: list[int]) -> tuple[str, int, int]:
        """Wait for a job among ids to be running at --kill-at-step or later: its (worker host, step, total)."""
        return cluster_jobs.wait_until(  # type: ignore[no-any-return]
            lambda: cluster_jobs.running_mid_job(self.cluster, ids, self.args.kill_at_step),
            self.args.job_timeout,
            f"job running at step {self.args.kill_at_step} or later",
        )

    def worker(self) -> None:
        ids = self.queue_jobs()
        host, step, total = self.mid_job(ids)
        began = time.monotonic()
        self.cluster.kill(host)
        time.sleep(self.args.worker_down_seconds)
        ended = time.monotonic()
        self.cluster.start(host)
        again = f"started again {self.args.worker_down_seconds:g} s later"
        what = f"kill -9 {host} with a job at step {step} of {total}, {again}"
        self.record("worker", "worker host killed", what, "its restart", began, ended, ids)

    def db(self) -> None:
        ids = self.queue_jobs()
        self.mid_job(ids)
        began = time.monotonic()
        self.cluster.link("db", "down")
        time.sleep(self.args.db_down_seconds)
        self.cluster.link("db", "up")
        ended = time.monotonic()
        what = f"the db host's link down for {self.args.db_down_seconds:g} s, then up"
        self.record("db", "database link down", what, "the link's return", began, ended, ids)


def run(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    """Bring the cluster up and run the scenario on it; the figures (the caller takes the cluster down)."""
    url = cluster.up()
    headers = {"Authorization": f"Bearer {cluster.admin_key()}"}
    with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
        samples, prompt_id = served_tasks(client, cluster, args)
        alone = references(client, samples)
        load = OpenLoop(url, cluster.admin_key(), samples, args.rate, args.timeout)
        scenario = Scenario(cluster, client, load, args)
        scenario.prepare_jobs()
        load.start()
        began = time.monotonic()
        time.sleep(args.settle)
        for kind in args.faults:
            getattr(scenario, kind)()
        outcomes = load.stop()
        figures: dict[str, Any] = {
            "layout": f"{args.apis} API hosts, {args.workers} worker hosts, {os.cpu_count()} cores"
            + (f", model {args.model_path}" if args.model_path else ", the bundled model"),
            "args": vars(args),
            "rate": args.rate,
            "samples": len(samples),
            "tolerance": args.tolerance,
            "seconds": round(time.monotonic() - began, 1),
        }
        inside = [(fault["began"], fault["until"]) for fault in scenario.faults]
        outside = [o for o in outcomes if not any(a <= o.sent < b for a, b in inside)]
        figures["outside_faults"] = requests(outside, alone, args.tolerance, 0.0, float("inf"))
        figures["outside_faults"]["seconds"] = None
        for fault in scenario.faults:
            fault["requests"] = requests(outcomes, alone, args.tolerance, fault["began"], fault["until"])
            fault["targets"] = targets(fault)
            for moment in ("began", "ended", "until"):  # seconds since the load began
                fault[moment] = round(fault[moment] - began, 1)
        figures["faults"] = scenario.faults
        figures["affinity"] = affinity(cluster, client, args, prompt_id) if args.affinity_tasks else []
    return figures


def affinity(cluster: Cluster, client: httpx.Client, args: argparse.Namespace, prompt_id: int) -> list[dict[str, Any]]:
    """The hit-rate part: its tasks made once (copies of a trained version), then one run per pool capacity."""
    cluster_affinity.make_tasks(client, args.affinity_tasks, prompt_id, args.concurrency)
    return [
        cluster_affinity.measure(
            cluster,
            client,
            tasks=args.affinity_tasks,
            warmup=args.affinity_warmup,
            requests=args.affinity_requests,
            s=args.zipf_s,
            capacity=capacity,
            concurrency=args.concurrency,
            seed=args.seed,
        )
        for capacity in args.pool_capacities
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda text: [int(n) for n in text.split(",") if n]  # noqa: E731
    add = parser.add_argument
    add("--apis", type=int, default=2)
    add("--workers", type=int, default=2)
    add(
        "--faults",
        type=lambda t: [f for f in t.split(",") if f],
        default=["api", "worker", "db"],
        help="which faults, in order (api, worker, db)",
    )
    add("--rate", type=float, default=20.0, help="requests per second of the open-loop load")
    add("--tasks", type=int, default=4, help="classification tasks served by the load")
    add("--generation-tasks", type=int, default=1, help="generation tasks served by the load")
    add("--inputs", type=int, default=8, help="inputs per served task")
    add("--max-new-tokens", type=int, default=8)
    add("--examples", type=int, default=40, help="examples per uploaded dataset")
    add("--train-steps", type=int, default=30, help="steps of each served task's training")
    add("--jobs", type=int, default=4, help="train jobs queued at each fault")
    add("--job-steps", type=int, default=40, help="steps of each fault's jobs (long enough to be mid-job)")
    add("--kill-at-step", type=int, default=1, help="the worker dies (or the db's link) once a job reached this step")
    add("--api-down-seconds", type=float, default=5.0)
    add("--worker-down-seconds", type=float, default=2.0)
    add("--db-down-seconds", type=float, default=10.0)
    add("--heartbeat-timeout", type=float, default=15.0, help="PROMPTBANK_HEARTBEAT_TIMEOUT_SECONDS of the workers")
    add("--settle", type=float, default=5.0, help="load kept after each recovery (and before the first fault)")
    add("--tolerance", type=float, default=1e-3, help="largest difference of a label probability from alone")
    add("--timeout", type=float, default=60.0, help="the load's client timeout per request (s)")
    add("--healthy-timeout", type=float, default=180.0)
    add("--job-timeout", type=float, default=600.0)
    add("--affinity-tasks", type=int, default=1000, help="tasks of the hit-rate part (0: skip it)")
    add("--affinity-warmup", type=int, default=1000)
    add("--affinity-requests", type=int, default=2000)
    add("--pool-capacities", type=numbers, default=[1024, 256], help="PROMPTBANK_POOL_CAPACITY of each hit-rate run")
    add("--zipf-s", type=float, default=1.1)
    add("--concurrency", type=int, default=8, help="clients of the hit-rate part")
    add("--seed", type=int, default=0)
    add("--model-path", default=None, help="PROMPTBANK_MODEL_PATH of every host (default: the bundled model)")
    add("--data-dir", default="data", help="PROMPTBANK_DATA_DIR of every host")
    add("--name", default="pbbench", help="PROMPTBANK_CLUSTER_NAME (namespace prefix)")
    add("--out", default="bench/results/cluster.json")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace, parent: Path, inherited: dict[str, str] | None = None) -> Cluster:
    """The cluster the scenario runs on: the inherited PROMPTBANK_* settings, then the scenario's own."""
    settings = dict(inherited or {})
    settings.update(
        PROMPTBANK_DATA_DIR=str(Path(args.data_dir).resolve()),
        PROMPTBANK_HEARTBEAT_SECONDS="1",
        PROMPTBANK_HEARTBEAT_TIMEOUT_SECONDS=str(args.heartbeat_timeout),
        PROMPTBANK_WORKER_POLL_SECONDS="0.5",
    )
    if args.model_path:
        settings["PROMPTBANK_MODEL_PATH"] = str(Path(args.model_path).resolve())
    return Cluster(args.name, parent / "state", free_port(), args.apis, args.workers, settings)


def main() -> None:
    args = parse_args()
    if reason := namespaces_unavailable():
        raise SystemExit(f"bench.cluster: {reason}")
    unknown = set(args.faults) - {"api", "worker", "db"}
    if unknown:
        raise SystemExit(f"bench.cluster: unknown faults {sorted(unknown)}; choose from api, worker, db")
    # PostgreSQL runs as the postgres user: the state directory must be one it can reach
    parent = Path(tempfile.mkdtemp(prefix="promptbank-bench-cluster-"))
    parent.chmod(0o755)
    cluster = configure(args, parent, {k: v for k, v in os.environ.items() if k.startswith("PROMPTBANK_")})
    try:
        figures = run(args, cluster)
    finally:
        cluster.down()
        shutil.rmtree(parent, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str))
    text = report(figures)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

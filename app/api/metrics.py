"""Prometheus metrics of one API process (prometheus_client), served by GET /metrics.

Counted as requests pass (the request middleware, app/api/request_ids.py, measures each once): requests and latency
per route template and status, and for the model routes requests, rows and latency per task. Read at scrape time:
the engine's queue, batches and prompt pool, and from the database the jobs by status, training speed and workers'
heartbeats. Task names become label values only for the busiest tasks (PROMPTBANK_METRICS_TASK_LABELS of them);
every other task counts as "other", so the number of series stays bounded however many tasks are served."""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from app.engine.serving.runtime import ModelRuntime
from app.services.operations import job_gauges
from app.services.shared_limits import SharedLimits

log = logging.getLogger(__name__)

# What a model route leaves in the request's state for the middleware: the task served and its rows.
TASK_NAME, TASK_ROWS = "promptbank_metrics_task", "promptbank_metrics_rows"
TASK_VERSION = "promptbank_metrics_version"
TASK_TOP_SCORES = "promptbank_metrics_top_scores"
OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class TaskLabels:
    """A task's label value: its name while it is among the `top` busiest tasks seen, else "other". A name once
    labelled keeps its label (its series must not jump), and at most 2 x top names are ever labelled."""

    def __init__(self, top: int, *, max_tracked: int = 10_000) -> None:
        self.top, self.max_tracked = top, max_tracked
        self.counts: dict[str, int] = {}
        self.labelled: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, task: str) -> str:
        with self._lock:
            if task in self.counts or len(self.counts) < self.max_tracked:
                self.counts[task] = self.counts.get(task, 0) + 1
            if task in self.labelled:
                return task
            if len(self.labelled) >= 2 * self.top or task not in self.counts:
                return OTHER
            busiest = heapq.nlargest(self.top, self.counts.items(), key=lambda item: item[1])
            if self.counts[task] >= busiest[-1][1]:
                self.labelled.add(task)
                return task
            return OTHER


class Metrics:
    """The process's registry and the instruments the middleware feeds."""

    def __init__(self, *, task_labels: int) -> None:
        self.registry = CollectorRegistry()
        self.task_label = TaskLabels(task_labels)
        self.requests = Counter(
            "promptbank_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "promptbank_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_requests = Counter(
            "promptbank_inference_requests",
            "Model requests by task and outcome.",
            ["route", "task", "status"],
            registry=self.registry,
        )
        self.inference_rows = Counter(
            "promptbank_inference_rows", "Inputs served by task.", ["task"], registry=self.registry
        )
        self.version_requests = Counter(
            "promptbank_inference_version_requests",
            "Model requests answered, by task and the prompt version (id) that served them.",
            ["task", "prompt_id"],
            registry=self.registry,
        )
        self.version_top_score = Histogram(
            "promptbank_inference_version_top_score",
            "The top label's probability of each classified row, by task and the prompt version (id) that served it.",
            ["task", "prompt_id"],
            buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "promptbank_inference_duration_seconds",
            "Model request latency by task (queue wait included).",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float, state: dict[str, Any]) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        task = state.get(TASK_NAME)
        if task is not None:
            label = self.task_label(task)
            self.inference_requests.labels(route, label, str(status)).inc()
            if status < 400:
                self.inference_rows.labels(label).inc(state.get(TASK_ROWS, 0))
                version = state.get(TASK_VERSION)
                if version is not None and label != OTHER:  # version labels only for the tasks named above
                    self.version_requests.labels(label, str(version)).inc()
                    for top in state.get(TASK_TOP_SCORES) or ():
                        self.version_top_score.labels(label, str(version)).observe(top)
                self.inference_latency.labels(label).observe(seconds)

    def version_counts(self) -> dict[str, dict[str, int]]:
        """Requests answered per task and version, as counted so far: {task: {prompt id: requests}}."""
        counts: dict[str, dict[str, int]] = {}
        for family in self.version_requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts.setdefault(sample.labels["task"], {})[sample.labels["prompt_id"]] = int(sample.value)
        return counts

    def version_scores(self) -> dict[str, dict[str, dict[str, float]]]:
        """Classified rows per task and version with their mean top label probability:
        {task: {prompt id: {"rows": n, "mean_top_score": p}}}."""
        sums: dict[tuple[str, str], list[float]] = {}
        for family in self.version_top_score.collect():
            for sample in family.samples:
                entry = sums.setdefault((sample.labels["task"], sample.labels["prompt_id"]), [0.0, 0.0])
                if sample.name.endswith("_count"):
                    entry[0] = sample.value
                elif sample.name.endswith("_sum"):
                    entry[1] = sample.value
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for (task, prompt_id), (rows, total) in sums.items():
            if rows:
                scores.setdefault(task, {})[prompt_id] = {"rows": int(rows), "mean_top_score": total / rows}
        return scores

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class ServiceCollector(Collector):
    """Read at scrape time: the engine's queue, batches and pool, and the jobs in the database."""

    def __init__(self, runtime: Callable[[], ModelRuntime | None], sessions: Callable[[], sessionmaker[Session]]):
        self.runtime, self.sessions = runtime, sessions

    def collect(self) -> Iterator[Any]:
        runtime = self.runtime()
        stats = runtime.stats() if runtime is not None else None
        if stats is not None:
            yield from _engine_families(stats)
        try:
            with self.sessions()() as session:
                jobs = job_gauges(session)
        except Exception:  # a scrape still answers the engine's figures while the database is away
            log.warning("GET /metrics could not read the jobs", exc_info=True)
            yield GaugeMetricFamily("promptbank_database_up", "Whether the jobs could be read.", value=0)
            return
        yield GaugeMetricFamily("promptbank_database_up", "Whether the jobs could be read.", value=1)
        by_status = GaugeMetricFamily("promptbank_jobs", "Jobs by status (every tenant).", labels=["status"])
        for status, count in jobs.by_status.items():
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "promptbank_training_steps_per_second",
            "Optimizer steps per second, summed over the running jobs (each: steps so far / seconds since start).",
            value=jobs.steps_per_second,
        )
        beats = GaugeMetricFamily(
            "promptbank_worker_heartbeat_age_seconds",
            "Seconds since each worker with a running job last beat.",
            labels=["worker"],
        )
        for worker, age in sorted(jobs.heartbeat_age.items()):
            beats.add_metric([worker], age)
        yield beats


class SharedLimitsCollector(Collector):
    """Read at scrape time: whether the limits are shared through Redis, and how its outages went."""

    def __init__(self, shared: Callable[[], SharedLimits | None]) -> None:
        self.shared = shared

    def collect(self) -> Iterator[Any]:
        shared = self.shared()
        yield GaugeMetricFamily(
            "promptbank_shared_limits_enabled",
            "1 when rate limits and failed-key counts are shared through Redis (PROMPTBANK_REDIS_URL), else 0.",
            value=int(shared is not None),
        )
        if shared is None:
            return
        yield GaugeMetricFamily(
            "promptbank_shared_limits_up", "0 while Redis does not answer (each process limits alone).", value=shared.up
        )
        yield CounterMetricFamily("promptbank_shared_limits_errors", "Redis calls that failed.", value=shared.errors)
        yield CounterMetricFamily(
            "promptbank_shared_limits_local_decisions",
            "Limit checks this process decided alone because Redis did not answer (fail open).",
            value=shared.alone,
        )


def _engine_families(stats: dict[str, Any]) -> Iterator[Any]:
    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=float("nan") if value is None else value)

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    pool = stats["pool"]
    yield gauge("promptbank_engine_queued_requests", "Requests waiting for the engine.", stats["queued_requests"])
    yield gauge("promptbank_engine_queued_rows", "Rows waiting for the engine.", stats["queued_rows"])
    yield gauge("promptbank_engine_decoding_rows", "Rows in the running decode batch.", stats["decoding_rows"])
    wait = stats["queue_ms_p50"], stats["queue_ms_p99"]
    yield gauge("promptbank_engine_queue_wait_p50_seconds", "Queue wait, median of recent rounds.", _seconds(wait[0]))
    yield gauge("promptbank_engine_queue_wait_p99_seconds", "Queue wait, p99 of recent rounds.", _seconds(wait[1]))
    yield gauge("promptbank_engine_batch_rows_mean", "Rows per batch, mean of recent rounds.", stats["mean_batch_rows"])
    yield gauge("promptbank_engine_batch_rows_max", "Most rows in one batch.", stats["max_batch_rows"])
    yield counter("promptbank_engine_batches", "Engine rounds run.", stats["batches"])
    yield counter("promptbank_engine_rows", "Rows computed by the engine.", stats["rows"])
    for outcome in ("rejected", "timed_out", "cancelled", "failed"):
        yield counter(
            f"promptbank_engine_{outcome}_requests",
            f"Requests {outcome.replace('_', ' ')}.",
            stats[f"{outcome}_requests"],
        )
    yield gauge("promptbank_prompt_pool_entries", "Prompt versions cached.", pool["entries"])
    yield gauge("promptbank_prompt_pool_capacity", "Most prompt versions cached.", pool["capacity"])
    yield gauge("promptbank_prompt_pool_bytes", "Bytes of cached prompt keys/values.", pool["bytes"])
    yield counter("promptbank_prompt_pool_hits", "Prompt pool hits.", pool["hits"])
    yield counter("promptbank_prompt_pool_misses", "Prompt pool misses (a version loaded).", pool["misses"])
    yield counter("promptbank_prompt_pool_evictions", "Prompt pool evictions.", pool["evictions"])


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000

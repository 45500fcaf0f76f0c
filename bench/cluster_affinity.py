"""What task affinity gains: the API hosts' prompt-pool hit rate for many tasks under Zipf-distributed traffic, with
the balancer's task affinity (each task's requests to one replica) and with round robin (PROMPTBANK_CLUSTER_AFFINITY
=off), every mode starting from empty pools (the API hosts started again) and seeing the same sequence of tasks.

The tasks are cheap: one trained prompt exported as a PEFT adapter and imported as the version of every task."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.cluster_hosts import REPLICA_HEADER, Cluster
from bench.cluster_jobs import TEMPLATE

TEXT = "the film was good"


def task_name(rank: int) -> str:
    return f"zipf-{rank:04d}"


def make_tasks(client: httpx.Client, count: int, prompt_id: int, concurrency: int) -> None:
    """count tasks, each serving a copy of version prompt_id (imported as its own version)."""
    exported = client.get(f"/v1/prompts/{prompt_id}/export", params={"format": "peft"})
    exported.raise_for_status()
    adapter = exported.content

    def one(rank: int) -> None:
        name = task_name(rank)
        body = {"name": name, "kind": "classification", "labels": ["positive", "negative"], "template": TEMPLATE}
        client.post("/v1/tasks", json=body).raise_for_status()
        imported = client.post(
            "/v1/prompts/import", data={"task": name}, files={"file": ("adapter.zip", adapter, "application/zip")}
        )
        imported.raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))


def zipf_ranks(count: int, requests: int, s: float, seed: int) -> list[int]:
    """requests task ranks drawn with P(rank k) proportional to 1 / (k + 1) ** s."""
    weights = [1.0 / (rank + 1) ** s for rank in range(count)]
    return random.Random(seed).choices(range(count), weights=weights, k=requests)


def pool_counts(client: httpx.Client, replicas: list[str]) -> dict[str, dict[str, int]]:
    """Each API host's pool counters (GET /v1/stats goes round robin: asked until every host answered)."""
    seen: dict[str, dict[str, int]] = {}
    for _ in range(20 * len(replicas)):
        response = client.get("/v1/stats")
        response.raise_for_status()
        seen[response.headers[REPLICA_HEADER]] = response.json()["engine"]["pool"]
        if set(seen) >= set(replicas):
            return seen
    raise RuntimeError(f"/v1/stats answered only from {sorted(seen)}")


def send(client: httpx.Client, ranks: list[int], concurrency: int) -> dict[str, int]:
    """One request per rank (closed loop, `concurrency` at a time); how many each replica answered."""

    def one(rank: int) -> str:
        response = client.post("/v1/infer", json={"task": task_name(rank), "inputs": [TEXT]})
        response.raise_for_status()
        return response.headers[REPLICA_HEADER]

    served: dict[str, int] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for replica in pool.map(one, ranks):
            served[replica] = served.get(replica, 0) + 1
    return served


def hit_rate(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, Any]:
    hits = sum(after[r]["hits"] - before[r]["hits"] for r in after)
    misses = sum(after[r]["misses"] - before[r]["misses"] for r in after)
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "evictions": sum(after[r]["evictions"] - before[r]["evictions"] for r in after),
        "entries": {r: after[r]["entries"] for r in sorted(after)},
    }


def measure(
    cluster: Cluster,
    client: httpx.Client,
    *,
    tasks: int,
    warmup: int,
    requests: int,
    s: float,
    capacity: int | None,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    """The hit rate with affinity and with round robin: warmup requests, then `requests` measured ones."""
    ranks = zipf_ranks(tasks, warmup + requests, s, seed)
    settings = {"PROMPTBANK_POOL_CAPACITY": str(capacity)} if capacity else {}
    modes: dict[str, Any] = {}
    for mode, affinity in (("affinity", "on"), ("round_robin", "off")):
        cluster.kill("lb")
        for host in cluster.api_hosts:
            cluster.kill(host)
        cluster.start_many(cluster.api_hosts, extra=settings)  # empty pools
        cluster.start("lb", extra={"PROMPTBANK_CLUSTER_AFFINITY": affinity})
        start = pool_counts(client, cluster.api_hosts)
        warm_served = send(client, ranks[:warmup], concurrency)
        warm = pool_counts(client, cluster.api_hosts)
        served = send(client, ranks[warmup:], concurrency)
        end = pool_counts(client, cluster.api_hosts)
        modes[mode] = {
            "warmup": {**hit_rate(start, warm), "served": warm_served},
            "measured": {**hit_rate(warm, end), "served": served},
            "capacity": next(iter(end.values()))["capacity"],
        }
    return {
        "tasks": tasks,
        "zipf_s": s,
        "warmup": warmup,
        "requests": requests,
        "distinct_tasks": len(set(ranks)),
        "modes": modes,
    }

"""Training jobs of the fault scenario: toy datasets a small model learns, jobs queued through the balancer with
distinct seeds, and their ledger read from the database's rows: how each ended, its attempts and workers, and how
many prompt versions it stored (one: trained once; none: lost; more: trained twice)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.cluster_hosts import Cluster

POSITIVE = ["good", "great", "fine", "nice", "happy", "superb"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly", "dull"]
FILLER = ["the", "movie", "was", "very", "a", "story", "film", "and", "it", "plot", "cast", "ending"]
TEMPLATE = "Review: {input}\nSentiment:"
ENDED = ("succeeded", "failed", "cancelled")


def toy_examples(n: int, seed: int) -> list[dict[str, str]]:
    """Sentences whose label one sentiment word gives away: learnable by any model, the tiny test one too."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        examples.append({"input": " ".join(words), "output": label})
    return examples


def echo_examples(n: int, seed: int) -> list[dict[str, str]]:
    """A generation task: answer with the review's sentiment word."""
    return [
        {"input": ex["input"], "output": next(w for w in ex["input"].split() if w in POSITIVE + NEGATIVE)}
        for ex in toy_examples(n, seed)
    ]


def hyperparameters(steps: int, seed: int) -> dict[str, Any]:
    return {
        "num_virtual_tokens": 4,
        "steps": steps,
        "batch_size": 8,
        "learning_rate": 0.1,
        "eval_every": steps,
        "warmup_steps": 0,
        "seed": seed,
    }


def create_task(client: httpx.Client, name: str, kind: str = "classification") -> None:
    body: dict[str, Any] = {"name": name, "kind": kind, "template": TEMPLATE}
    if kind == "classification":
        body["labels"] = ["positive", "negative"]
    else:
        body["template"] = "Review: {input}\nWord:"
    response = client.post("/v1/tasks", json=body)
    response.raise_for_status()


def upload(client: httpx.Client, name: str, examples: list[dict[str, str]]) -> int:
    response = client.post("/v1/datasets", json={"name": name, "examples": examples})
    response.raise_for_status()
    return int(response.json()["id"])


def queue(client: httpx.Client, jobs: list[tuple[str, int]], dataset_id: int, steps: int) -> list[int]:
    """Queue a train job per (task, seed); their ids."""
    ids = []
    for task, seed in jobs:
        body = {
            "type": "train",
            "task": task,
            "dataset_id": dataset_id,
            "hyperparameters": hyperparameters(steps, seed),
        }
        response = client.post("/v1/jobs", json=body)
        response.raise_for_status()
        ids.append(int(response.json()["id"]))
    return ids


def wait_until(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll check() until it returns something true; that value, or TimeoutError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll)
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def running_mid_job(cluster: Cluster, ids: list[int], at_step: int) -> tuple[str, int, int] | None:
    """(worker host, step, total steps) of a job among ids running at step at_step or later and not done; None
    while there is none (a job's step is what its heartbeat last wrote)."""
    rows = cluster.rows(
        "SELECT worker_id, progress FROM jobs WHERE id = ANY(%s) AND status = 'running' AND worker_id IS NOT NULL",
        (ids,),
    )
    for worker_id, progress in rows:
        step, total = int((progress or {}).get("step", 0)), int((progress or {}).get("total_steps", 0))
        if at_step <= step < max(total, 1):
            return str(worker_id).split(":")[0].removeprefix(f"{cluster.name}-"), step, total
    return None


def all_ended(cluster: Cluster, ids: list[int]) -> bool:
    rows = cluster.rows("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = ANY(%s)", (ids, list(ENDED)))
    return int(rows[0][0]) == len(ids)


def ledger(cluster: Cluster, ids: list[int]) -> list[dict[str, Any]]:
    """Each job as the database has it: status, attempts, the workers that started it, prompt versions stored."""
    rows = cluster.rows(
        """SELECT j.id, j.status, j.attempts, j.error,
                  (SELECT count(*) FROM prompts p WHERE p.job_id = j.id),
                  (SELECT array_agg(e.data->>'worker_id' ORDER BY e.id) FROM job_events e
                    WHERE e.job_id = j.id AND e.kind = 'started'),
                  (SELECT count(*) FROM job_events e WHERE e.job_id = j.id AND e.kind = 'succeeded')
             FROM jobs j WHERE j.id = ANY(%s) ORDER BY j.id""",
        (ids,),
    )
    return [
        {
            "id": job_id,
            "status": status,
            "attempts": attempts,
            "error": error,
            "prompts": int(prompts),
            "started_by": [str(worker).split(":")[0].removeprefix(f"{cluster.name}-") for worker in started or []],
            "succeeded_events": int(succeeded),
        }
        for job_id, status, attempts, error, prompts, started, succeeded in rows
    ]


def tally(jobs: list[dict[str, Any]], queued: int) -> dict[str, Any]:
    """Lost (queued but not one stored version: never finished, failed or missing) and trained twice (more)."""
    lost = [job["id"] for job in jobs if job["status"] != "succeeded" or job["prompts"] == 0]
    twice = [job["id"] for job in jobs if job["prompts"] > 1 or job["succeeded_events"] > 1]
    return {
        "queued": queued,
        "succeeded_once": sum(1 for job in jobs if job["status"] == "succeeded" and job["prompts"] == 1),
        "lost": lost + ["(missing)"] * (queued - len(jobs)),
        "trained_twice": twice,
        "retried": [job["id"] for job in jobs if job["attempts"] > 1],
        "jobs": jobs,
    }

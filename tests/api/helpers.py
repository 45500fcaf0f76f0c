"""Small helpers for API tests: a learnable toy dataset and a job waiter."""

from __future__ import annotations

import random
import time
from typing import Any

from fastapi.testclient import TestClient

POSITIVE = ["good", "great", "fine", "nice", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "movie", "was", "very", "a", "story", "film", "and", "it", "plot"]


def toy_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentences whose label is given away by one sentiment word: learnable by a tiny model."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = rng.sample(FILLER, 4) + [word]
        rng.shuffle(words)
        examples.append({"input": " ".join(words), "output": label})
    return examples


def create_task(client: TestClient, name: str = "sentiment", **overrides: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "kind": "classification",
        "labels": ["positive", "negative"],
        "template": "Review: {input}\nSentiment:",
        **overrides,
    }
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def create_dataset(client: TestClient, examples: list[dict[str, str]], name: str = "toy") -> dict[str, Any]:
    response = client.post("/v1/datasets", json={"name": name, "examples": examples})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


FAST = {
    "num_virtual_tokens": 4,
    "steps": 20,
    "batch_size": 8,
    "learning_rate": 0.1,
    "eval_every": 10,
    "warmup_steps": 0,
    "seed": 1,
}


def start_job(client: TestClient, task: str, dataset_id: int, **hyper: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/jobs", json={"type": "train", "task": task, "dataset_id": dataset_id, "hyperparameters": {**FAST, **hyper}}
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for_job(client: TestClient, job_id: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def train_task(client: TestClient, name: str = "sentiment", **hyper: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a task, upload toy data, train to completion; (task, finished job)."""
    task = create_task(client, name)
    dataset = create_dataset(client, toy_examples(40))
    job = wait_for_job(client, start_job(client, name, dataset["id"], **hyper)["id"])
    assert job["status"] == "succeeded", job
    return task, job


def wait_for_step(client: TestClient, job_id: int, step: int, timeout: float = 60.0) -> None:
    """Wait until a running job has reported at least this many steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if job["progress"]["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach step {step} in {timeout} s")

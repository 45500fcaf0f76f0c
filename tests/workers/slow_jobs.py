"""Jobs that compute for many seconds on the tiny model: what a stop must be able to cut short."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.helpers import FILLER, create_dataset, create_task, toy_examples


def long_examples(n: int, seed: int, labels: tuple[str, str] = ("positive", "negative")) -> list[dict[str, str]]:
    """Toy examples padded with 90 filler words: sentence-length inputs, near the tiny model's 256 positions."""
    padding = " ".join(FILLER * 9)
    return [
        {"input": f"{padding} {e['input']}", "output": labels[0] if e["output"] == "positive" else labels[1]}
        for e in toy_examples(n, seed=seed)
    ]


def slow_meta_init(client: TestClient) -> dict[str, Any]:
    """A meta_init job whose outer steps take many seconds on the tiny model (32 task samples of 8 long support
    and 8 long query examples, 5 inner steps each); its evaluation (3 tasks) takes a tenth of that."""
    tasks = []
    for index, labels in enumerate([("positive", "negative"), ("good", "bad"), ("yes", "no")]):
        create_task(client, f"t{index}", labels=list(labels), template=f"Text {index}: {{input}}\nLabel:")
        dataset = create_dataset(client, long_examples(40, seed=index, labels=labels), name=f"d{index}")
        tasks.append({"task": f"t{index}", "dataset_id": dataset["id"]})
    hyper = {
        "num_virtual_tokens": 4,
        "order": "first",
        "inner_steps": 5,
        "outer_steps": 100,
        "meta_batch": 32,
        "support_size": 8,
        "query_size": 8,
        "eval_every": 1000,
    }
    body = {"type": "meta_init", "name": "slow", "tasks": tasks, "hyperparameters": hyper}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]

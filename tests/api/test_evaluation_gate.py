"""The evaluation gate: a task's evaluation dataset scores every new version, GET /v1/tasks/{task}/evaluations lists
them on the same set, and a job's `promote` decides whether its version becomes active."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.services.evaluation import classification_metrics, generation_metrics
from tests.api.helpers import create_dataset, create_task, toy_examples, wait_for_job

QUICK = {"steps": 2, "eval_every": 2, "num_virtual_tokens": 2}


def _gated_task(client: TestClient) -> tuple[int, int]:
    """ "sentiment" with an evaluation dataset: (training dataset id, evaluation dataset id)."""
    create_task(client, "sentiment")
    train = create_dataset(client, toy_examples(24))
    held = create_dataset(client, toy_examples(12, seed=7), name="held-out")
    response = client.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": held["id"]})
    assert response.status_code == 200, response.text
    assert response.json()["evaluation_dataset_id"] == held["id"]
    return train["id"], held["id"]


def _run(client: TestClient, dataset_id: int, **body: object) -> dict[str, object]:
    response = client.post(
        "/v1/jobs", json={"task": "sentiment", "dataset_id": dataset_id, "hyperparameters": QUICK, **body}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_every_version_is_scored_on_the_same_set_and_never_keeps_the_active_one(client: TestClient) -> None:
    train, held = _gated_task(client)
    first = _run(client, train)
    second = _run(client, train, promote="never")
    assert second["promote"] == "never" and first["promote"] == "always"
    task = client.get("/v1/tasks/sentiment").json()
    assert task["active_prompt_id"] == first["result_prompt_id"]
    rows = client.get("/v1/tasks/sentiment/evaluations").json()["data"]
    assert [(r["prompt_id"], r["active"]) for r in rows] == [
        (first["result_prompt_id"], True),
        (second["result_prompt_id"], False),
    ]
    for row in rows:
        assert row["dataset_id"] == held and row["metrics"]["examples"] == 12
        assert {"accuracy", "macro_f1", "calibration_error"} <= set(row["metrics"])
        assert 0 <= row["metrics"]["accuracy"] <= 1
    # what a user might pick instead, on the same set, trained on the active version's training data
    references = {r["name"]: r for r in client.get("/v1/tasks/sentiment/evaluations").json()["references"]}
    assert set(references) == {"majority", "tfidf_logistic_regression"}
    for reference in references.values():
        assert reference["training_dataset_id"] == train and reference["metrics"]["examples"] == 12
    majority = references["majority"]["metrics"]
    assert majority["calibration_error"] == pytest.approx(1 - majority["accuracy"])  # always sure, right that often
    events = client.get(f"/v1/jobs/{second['id']}/events").json()
    assert any(e["kind"] == "not_promoted" and "promote is never" in e["message"] for e in events)
    assert any(e["kind"] == "evaluated" for e in events)


def test_if_better_keeps_the_active_version_when_the_new_one_only_ties(client: TestClient) -> None:
    train, _ = _gated_task(client)
    first = _run(client, train)
    # The same seeded job again: the same prompt, the same scores; not better, so stored inactive.
    again = _run(client, train, promote="if_better")
    assert client.get("/v1/tasks/sentiment").json()["active_prompt_id"] == first["result_prompt_id"]
    events = client.get(f"/v1/jobs/{again['id']}/events").json()
    refused = next(e for e in events if e["kind"] == "not_promoted")
    assert "not better" in refused["message"] and refused["data"]["new"] == refused["data"]["active"]


def test_if_better_without_an_evaluation_set_promotes_and_says_so(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(24))
    job = _run(client, dataset["id"], promote="if_better")
    assert client.get("/v1/tasks/sentiment").json()["active_prompt_id"] == job["result_prompt_id"]
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert any(e["kind"] == "warning" and "no evaluation dataset" in e["message"] for e in events)
    assert client.get("/v1/tasks/sentiment/evaluations").json()["data"] == []


def test_an_evaluation_dataset_the_task_cannot_use_is_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    other = create_dataset(client, [{"input": "x", "output": "maybe"}, {"input": "y", "output": "maybe"}])
    assert client.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": 99999}).status_code == 404
    refused = client.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": other["id"]})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "labels_not_declared"
    bad = client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": other["id"], "promote": "sometimes"})
    assert bad.status_code == 422


def test_the_metrics_are_what_their_definitions_give() -> None:
    gold = ["a", "a", "b", "b"]
    scores = [{"a": 0.9, "b": 0.1}, {"a": 0.4, "b": 0.6}, {"a": 0.2, "b": 0.8}, {"a": 0.3, "b": 0.7}]
    metrics = classification_metrics(gold, scores)
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # bins: 0.9 (right) alone; 0.6 (wrong), 0.7 (right) and 0.8 (right) each alone: |conf - acc| weighted by 1/4
    assert metrics["calibration_error"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    generated = generation_metrics(["the cat sat", "yes"], ["the cat", " yes "])
    assert generated["exact_match"] == 0.5
    assert generated["token_f1"] == pytest.approx((2 * (1.0 * 2 / 3) / (1.0 + 2 / 3) + 1.0) / 2)

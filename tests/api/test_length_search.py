"""`"type": "length_search"` jobs: train several prompt lengths, record each, keep the shortest good one."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.helpers import FAST, create_dataset, create_task, toy_examples, wait_for_job

QUICK = {**FAST, "steps": 3, "eval_every": 3}


def _length_search(client: TestClient, search: dict[str, Any], **hyper: Any) -> tuple[dict[str, Any], list[Any]]:
    """Run a length search on the toy data to the end; (finished job, its events)."""
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(16))
    body = {
        "type": "length_search",
        "task": "sentiment",
        "dataset_id": dataset["id"],
        "hyperparameters": {**QUICK, **hyper},
        "search": search,
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job, client.get(f"/v1/jobs/{job['id']}/events").json()


def test_length_search_records_every_length_and_stores_the_shortest_within_tolerance(client: TestClient) -> None:
    job, events = _length_search(client, {"lengths": [3, 1], "tolerance": 0.01})
    assert job["type"] == "length_search"
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 2 * QUICK["steps"]

    kinds = [e["kind"] for e in events]
    assert kinds.count("length") == 2 and kinds.count("length_chosen") == 1
    assert kinds.index("length_chosen") > max(i for i, kind in enumerate(kinds) if kind == "length")
    assert kinds[-1] == "succeeded"
    tried = [e["data"] for e in events if e["kind"] == "length"]
    assert [data["length"] for data in tried] == [1, 3]

    (chosen,) = [e["data"] for e in events if e["kind"] == "length_chosen"]
    scores = {int(n): score for n, score in chosen["scores"].items()}
    assert scores == {data["length"]: data["best_val_accuracy"] for data in tried}  # classification: accuracy
    best = max(scores.values())
    assert chosen["length"] == min(n for n, score in scores.items() if score >= best - 0.01)

    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["num_virtual_tokens"] == chosen["length"] and prompt["num_virtual_tokens"] in (1, 3)
    assert prompt["hyperparameters"]["num_virtual_tokens"] == chosen["length"]
    assert prompt["shapes"] == {"prompt": [chosen["length"], prompt["hidden_size"]]}
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["a good film"]}).json()
    assert served["prompt_id"] == prompt["id"]


def test_a_tolerance_covering_every_score_keeps_the_shortest_length_of_any_method(client: TestClient) -> None:
    # Accuracy lies in [0, 1]: within 1 of the best, every length qualifies, so the shortest is kept.
    job, events = _length_search(client, {"lengths": [1, 3], "tolerance": 1}, method="around", num_after_tokens=2)
    (chosen,) = [e["data"] for e in events if e["kind"] == "length_chosen"]
    assert chosen["length"] == 1
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["method"] == "around" and prompt["hyperparameters"]["num_virtual_tokens"] == 1
    assert prompt["num_virtual_tokens"] == 1 + 2  # positions before and after the input
    assert prompt["shapes"] == {"before": [1, 64], "after": [2, 64]}


def test_a_length_search_from_one_stored_prompt_is_refused(client: TestClient) -> None:
    # Each length is a prompt of another shape: no single stored version can start them all.
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(16))
    body = {
        "type": "length_search",
        "task": "sentiment",
        "dataset_id": dataset["id"],
        "hyperparameters": {**QUICK, "init": {"from_prompt": 1}},
        "search": {"lengths": [1, 2]},
    }
    response = client.post("/v1/jobs", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "init_prompt_invalid")
    assert "several lengths" in response.json()["error"]["message"]
    assert client.get("/v1/jobs").json() == []

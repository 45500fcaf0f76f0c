"""Canary traffic: PATCH /v1/tasks/{task} with `traffic` splits the task's requests between versions by weight,
the same user always meets the same version, and /v1/stats and /metrics count requests per version."""

from __future__ import annotations

from collections import Counter

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, start_job, toy_examples, train_task, wait_for_job


def _two_versions(client: TestClient) -> tuple[int, int]:
    """The task "sentiment" trained twice: (first version's id, second's, the active one)."""
    _, first = train_task(client, "sentiment", steps=2)
    dataset = create_dataset(client, toy_examples(24), name="more")
    second = wait_for_job(client, start_job(client, "sentiment", dataset["id"], steps=2)["id"])
    assert second["status"] == "succeeded", second
    return first["result_prompt_id"], second["result_prompt_id"]


def _served(client: TestClient, user: str | None = None) -> int:
    body = {"task": "sentiment", "inputs": ["a fine film"], **({"user": user} if user else {})}
    response = client.post("/v1/infer", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["prompt_id"])


def test_a_split_serves_each_version_its_share_and_a_user_always_the_same_one(client: TestClient) -> None:
    old, new = _two_versions(client)
    response = client.patch(
        "/v1/tasks/sentiment", json={"traffic": [{"prompt_id": old, "weight": 9}, {"prompt_id": new, "weight": 1}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["traffic"] == [{"prompt_id": old, "weight": 0.9}, {"prompt_id": new, "weight": 0.1}]
    assert response.json()["active_prompt_id"] == new  # the split does not change which version is active

    assert len({_served(client, "alice") for _ in range(5)}) == 1
    shares = Counter(_served(client, f"user-{i}") for i in range(200))
    assert set(shares) == {old, new} and 0.8 <= shares[old] / 200 <= 0.97
    counted = client.get("/v1/stats").json()["versions"]["sentiment"]
    assert int(counted[str(old)]) >= shares[old] and int(counted[str(new)]) >= shares[new]
    metrics = client.get("/metrics").text
    assert f'promptbank_inference_version_requests_total{{prompt_id="{old}",task="sentiment"}}' in metrics

    # null ends the split: the active version serves everyone again
    cleared = client.patch("/v1/tasks/sentiment", json={"traffic": None})
    assert cleared.status_code == 200 and cleared.json()["traffic"] is None
    assert {_served(client, f"user-{i}") for i in range(20)} == {new}


def test_stats_give_each_version_its_classified_rows_and_mean_top_score(client: TestClient) -> None:
    old, new = _two_versions(client)
    client.patch(
        "/v1/tasks/sentiment", json={"traffic": [{"prompt_id": old, "weight": 1}, {"prompt_id": new, "weight": 1}]}
    )
    tops: dict[int, list[float]] = {old: [], new: []}
    for i in range(12):
        body = {"task": "sentiment", "inputs": ["a fine film", "an awful plot"], "user": f"u{i}"}
        answer = client.post("/v1/infer", json=body).json()
        tops[answer["prompt_id"]] += [max(output["scores"].values()) for output in answer["outputs"]]
    scores = client.get("/v1/stats").json()["version_scores"]["sentiment"]
    for version, seen in tops.items():
        if seen:
            assert scores[str(version)]["rows"] == len(seen)
            assert abs(scores[str(version)]["mean_top_score"] - sum(seen) / len(seen)) < 1e-6
            assert 0.5 <= scores[str(version)]["mean_top_score"] <= 1.0
    assert 'promptbank_inference_version_top_score_count{prompt_id="' in client.get("/metrics").text


def test_a_deleted_version_s_share_falls_to_the_active_one(client: TestClient) -> None:
    old, new = _two_versions(client)
    client.patch(
        "/v1/tasks/sentiment", json={"traffic": [{"prompt_id": old, "weight": 1}, {"prompt_id": new, "weight": 1}]}
    )
    assert client.delete(f"/v1/prompts/{old}").status_code == 204
    assert {_served(client, f"user-{i}") for i in range(30)} == {new}


def test_a_split_outside_the_task_is_refused_saying_what_to_fix(client: TestClient) -> None:
    old, new = _two_versions(client)
    train_task(client, "other", steps=2)
    foreign = client.get("/v1/tasks/other").json()["active_prompt_id"]
    for body, code in [
        ({"traffic": [{"prompt_id": foreign, "weight": 1}]}, "traffic_invalid"),
        ({"traffic": [{"prompt_id": old, "weight": 1}, {"prompt_id": old, "weight": 1}]}, "traffic_invalid"),
        ({"traffic": [{"prompt_id": old, "weight": 0}]}, "validation_error"),
        ({}, "validation_error"),
        ({"ensemble": [old, new], "traffic": [{"prompt_id": old, "weight": 1}]}, "traffic_invalid"),
    ]:
        response = client.patch("/v1/tasks/sentiment", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == code, response.text
    task = client.get("/v1/tasks/sentiment").json()
    assert task["traffic"] is None and task["ensemble"] is None  # nothing half-applied

"""`"type": "tune"` jobs: a search over methods and their fields that prunes weak trials, records every trial, and
stores the best one's prompt."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, toy_examples, wait_for_job


def _tune(client: TestClient, **body: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a tune job on the toy data to the end; (finished job, its trials, its events)."""
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(48))
    response = client.post("/v1/jobs", json={"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], **body})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    trials = client.get(f"/v1/jobs/{job['id']}/trials")
    assert trials.status_code == 200, trials.text
    return job, trials.json()["data"], client.get(f"/v1/jobs/{job['id']}/events").json()


def test_a_search_prunes_weak_trials_and_keeps_the_best_finished_one(client: TestClient) -> None:
    # Learning rates from far too small to useful: some configurations learn, the others fall behind and are cut.
    # No early stopping: the pruner alone ends trials before their last step here.
    search = {
        "methods": ["prompt"],
        "num_virtual_tokens": [2],
        "learning_rate": [1e-6, 1.0],
        "steps_per_trial": 10,
        "patience": None,
    }
    job, trials, events = _tune(client, budget={"steps": 120}, search=search, seed=3)
    states = [trial["state"] for trial in trials]
    assert "pruned" in states and "finished" in states and "running" not in states
    assert [trial["number"] for trial in trials] == list(range(len(trials)))
    assert sum(trial["steps"] for trial in trials) <= 120
    for trial in trials:
        assert trial["method"] == "prompt" and trial["hyperparameters"]["num_virtual_tokens"] == 2
        assert 1e-6 <= trial["hyperparameters"]["learning_rate"] <= 1.0
        if trial["state"] == "pruned":
            assert trial["steps"] < 10 and len(trial["scores"]) >= 2
        if trial["state"] == "finished":
            assert trial["steps"] == trial["hyperparameters"]["steps"] <= 10 and trial["value"] == max(trial["scores"])
    finished = [trial for trial in trials if trial["state"] == "finished"]
    best = max(finished, key=lambda trial: trial["value"])
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["lineage"]["best_trial"] == best["number"]
    assert prompt["hyperparameters"]["learning_rate"] == best["hyperparameters"]["learning_rate"]
    kinds = [event["kind"] for event in events]
    assert kinds.count("trial") == len(trials) and "tune_chosen" in kinds
    # Fewer than 50 examples rank the trials here: the job says so.
    assert any(e["kind"] == "warning" and "validation examples rank the trials" in e["message"] for e in events)
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]})
    assert served.status_code == 200 and served.json()["prompt_id"] == job["result_prompt_id"]
    # Four trials trained at once (the default pack), a slot refilled as each ended: every trial event says how many
    # trials shared its passes and the job steps it lived between; the job's curve counts every trial step.
    ended = [event["data"] for event in events if event["kind"] == "trial"]
    assert len(trials) > 4 and max(trial["packed_with"] for trial in ended) == 3
    assert any(
        a["began_at_step"] < b["ended_at_step"] and b["began_at_step"] < a["ended_at_step"]
        for a in ended
        for b in ended
        if a is not b
    )
    steps = [point["step"] for point in client.get(f"/v1/jobs/{job['id']}/metrics").json()]
    assert steps == sorted(steps) and steps[-1] == sum(trial["steps"] for trial in trials)
    assert job["progress"]["total_steps"] == 120 and prompt["metrics"]["pack"] == 4


def test_a_search_over_methods_tries_each_with_its_own_fields(client: TestClient) -> None:
    search = {"methods": ["prompt", "input_mapping"], "num_virtual_tokens": [1, 2], "steps_per_trial": 5, "pack": 1}
    _, trials, events = _tune(client, budget={"steps": 40}, search=search, seed=0)
    # One trial at a time: none shared a pass, each began where the one before it ended.
    ended = [event["data"] for event in events if event["kind"] == "trial"]
    assert all(trial["packed_with"] == 0 for trial in ended)
    assert all(b["began_at_step"] == a["ended_at_step"] for a, b in zip(ended, ended[1:], strict=False))
    assert {trial["method"] for trial in trials} <= {"prompt", "input_mapping"}
    for trial in trials:
        tokens = trial["hyperparameters"]["num_virtual_tokens"]
        assert tokens in ((1, 2) if trial["method"] == "prompt" else (0,))


def test_a_tune_body_outside_its_space_is_refused_saying_what_to_fix(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(8))
    for search, fragment in [
        ({"methods": ["nope"]}, "methods must be some of"),
        ({"learning_rate": [0.1, 0.01]}, "0 < low < high"),
        ({"num_virtual_tokens": [0]}, "between 1 and 256"),
        ({"pack": 0}, "greater than or equal to 1"),
    ]:
        response = client.post(
            "/v1/jobs", json={"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], "search": search}
        )
        assert response.status_code == 422, response.text
        assert fragment in response.text
    bad_budget = {"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], "budget": {"hours": 1}}
    assert client.post("/v1/jobs", json=bad_budget).status_code == 422


SMALL = {"methods": ["prompt"], "num_virtual_tokens": [2], "learning_rate": [0.01, 0.3], "steps_per_trial": 5}


def test_an_ensemble_of_the_best_trials_is_stored_and_served_by_default(client: TestClient) -> None:
    job, trials, events = _tune(client, budget={"steps": 20}, search=SMALL, ensemble=2)
    task = client.get("/v1/tasks/sentiment").json()
    assert task["ensemble"] is not None and len(task["ensemble"]) == 2
    assert task["ensemble"][0] == job["result_prompt_id"] == task["active_prompt_id"]
    finished = sorted((t for t in trials if t["state"] == "finished"), key=lambda t: (-t["value"], t["number"]))
    member = client.get(f"/v1/prompts/{task['ensemble'][1]}").json()
    assert member["lineage"]["trial"] == finished[1]["number"]
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).json()
    assert served["ensemble"] == task["ensemble"]
    assert any(e["kind"] == "ensemble" for e in events)


def test_the_best_trials_distilled_make_one_prompt(client: TestClient) -> None:
    job, _, events = _tune(client, budget={"steps": 20}, search=SMALL, ensemble=2, distill=True)
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["lineage"]["distilled"] is True and len(prompt["lineage"]["ensemble_trials"]) == 2
    assert client.get("/v1/tasks/sentiment").json()["ensemble"] is None  # serving stays one prompt
    assert any(e["kind"] == "distilled" for e in events)
    assert job["progress"]["step"] == job["progress"]["total_steps"]


def test_distill_without_an_ensemble_is_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(8))
    body = {"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], "distill": True}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and "ensemble" in response.text

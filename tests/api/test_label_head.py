"""`"label_head": true` through the API: a version with a learned label head trains, is stored with its head and
served; a task or job kind that cannot take a head says so."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, toy_examples, train_task, wait_for_job


def test_a_version_with_a_label_head_trains_serves_and_has_no_peft_form(client: TestClient) -> None:
    _, job = train_task(client, label_head=True, steps=30, learning_rate=0.05)
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert prompt["hyperparameters"]["label_head"] is True
    assert prompt["shapes"]["head.weight"][0] == 2 and prompt["shapes"]["head.bias"] == [2]
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["a good film", "an awful film"]})
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["prompt_id"] == job["result_prompt_id"]
    for result in body["outputs"]:
        assert set(result["scores"]) == {"positive", "negative"}
        assert abs(sum(result["scores"].values()) - 1) < 1e-4
    exported = client.get(f"/v1/prompts/{job['result_prompt_id']}/export", params={"format": "peft"})
    assert exported.status_code == 422, exported.text
    assert exported.json()["error"]["code"] == "export_unsupported"
    assert "label head" in exported.json()["error"]["message"]
    # The same version as raw safetensors keeps its head.
    assert (
        client.get(f"/v1/prompts/{job['result_prompt_id']}/export", params={"format": "safetensors"}).status_code == 200
    )


def test_a_generation_task_or_a_meta_init_takes_no_label_head(client: TestClient) -> None:
    create_task(client, "answer", kind="generation", labels=[], template="Q: {input}\nA:")
    dataset = create_dataset(client, [{"input": f"q{i}", "output": f"a{i}"} for i in range(8)])
    train = {"type": "train", "task": "answer", "dataset_id": dataset["id"], "hyperparameters": {"label_head": True}}
    tune = {"type": "tune", "task": "answer", "dataset_id": dataset["id"], "search": {"label_head": [True]}}
    for body in (train, tune):
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "label_head_invalid"
        assert "leave" in response.json()["error"]["message"]
    tasks = [{"task": "answer", "dataset_id": dataset["id"]}] * 3
    meta = {"type": "meta_init", "name": "m", "tasks": tasks, "hyperparameters": {"label_head": True}}
    response = client.post("/v1/jobs", json=meta)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "label_head_invalid"


def test_a_tune_search_over_readouts_records_each_trials_choice(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(48))
    search = {"methods": ["prompt"], "num_virtual_tokens": [2], "steps_per_trial": 5, "label_head": [True]}
    body = {"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], "budget": {"steps": 10}, "search": search}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["data"]
    assert trials and all(trial["hyperparameters"]["label_head"] is True for trial in trials)
    prompt = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert "head.weight" in prompt["shapes"]

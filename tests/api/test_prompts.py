from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, start_job, toy_examples, train_task, wait_for_job


def test_prompt_list_shows_versions_with_metadata(client: TestClient) -> None:
    task, job = train_task(client)
    prompts = client.get("/v1/prompts", params={"task": "sentiment"}).json()
    assert len(prompts) == 1
    prompt = prompts[0]
    assert prompt["id"] == job["result_prompt_id"] and prompt["version"] == 1 and prompt["active"]
    assert prompt["method"] == "prompt" and prompt["num_virtual_tokens"] == 4
    assert prompt["shapes"] == {"prompt": [4, prompt["hidden_size"]]}
    assert prompt["size_bytes"] > 4 * prompt["hidden_size"] * 4  # float32 vectors plus a header
    health = client.get("/healthz").json()
    assert prompt["base_model"]["fingerprint"] == health["model"]["fingerprint"]
    assert prompt["job_id"] == job["id"] and "val_accuracy" in str(prompt["metrics"])
    assert client.get(f"/v1/prompts/{prompt['id']}").json() == prompt


def test_deleting_the_active_prompt_falls_back_then_leaves_task_untrained(client: TestClient) -> None:
    _task, first = train_task(client)
    dataset = create_dataset(client, toy_examples(20, seed=3))
    second = wait_for_job(client, start_job(client, "sentiment", dataset["id"], seed=2)["id"])
    assert second["status"] == "succeeded"
    assert client.get("/v1/tasks/sentiment").json()["active_prompt_id"] == second["result_prompt_id"]

    assert client.delete(f"/v1/prompts/{second['result_prompt_id']}").status_code == 204
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).json()
    assert served["prompt_id"] == first["result_prompt_id"]

    assert client.delete(f"/v1/prompts/{first['result_prompt_id']}").status_code == 204
    assert client.get("/v1/tasks/sentiment").json()["status"] == "untrained"
    response = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]})
    assert response.status_code == 409
    assert client.get(f"/v1/prompts/{first['result_prompt_id']}").status_code == 404


def test_activating_an_older_version_serves_it(client: TestClient) -> None:
    _task, first = train_task(client)
    dataset = create_dataset(client, toy_examples(20, seed=3))
    wait_for_job(client, start_job(client, "sentiment", dataset["id"], seed=2)["id"])
    response = client.post(f"/v1/prompts/{first['result_prompt_id']}/activate")
    assert response.status_code == 200 and response.json()["active"]
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).json()
    assert served["prompt_id"] == first["result_prompt_id"]


def test_prompt_of_another_base_model_is_refused(client: TestClient, db_engine) -> None:  # type: ignore[no-untyped-def]
    train_task(client)
    from sqlalchemy import update

    from app.db.models import Prompt

    with db_engine.begin() as conn:
        conn.execute(update(Prompt).values(base_model_fingerprint="0" * 64, base_model_name="other-model"))
    response = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "base_model_mismatch" and "other-model" in error["message"]


def test_unknown_prompt_is_404(client: TestClient) -> None:
    for method, path in (("GET", "/v1/prompts/999"), ("DELETE", "/v1/prompts/999")):
        response = client.request(method, path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "prompt_not_found"

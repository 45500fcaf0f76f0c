from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import (
    create_dataset,
    create_task,
    start_job,
    toy_examples,
    train_task,
    wait_for_job,
    wait_for_step,
)


def test_trained_task_serves_classification_with_scores_over_labels(client: TestClient) -> None:
    task, job = train_task(client)
    assert job["result_prompt_id"] is not None and job["progress"]["step"] == job["progress"]["total_steps"]
    assert client.get("/v1/tasks/sentiment").json()["status"] == "ready"
    response = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["a good film", "a bad film"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "sentiment" and body["prompt_id"] == job["result_prompt_id"]
    for output in body["outputs"]:
        assert set(output["scores"]) == {"positive", "negative"}
        assert abs(sum(output["scores"].values()) - 1.0) < 1e-4
        assert output["label"] == max(output["scores"], key=output["scores"].get)
    # the task id works wherever the name does
    by_id = client.post("/v1/infer", json={"task": task["id"], "inputs": ["a good film", "a bad film"]}).json()
    assert by_id["outputs"] == body["outputs"]


def test_job_event_log_is_ordered_from_queued_to_succeeded(client: TestClient) -> None:
    _task, job = train_task(client)
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded"
    # between them at enqueue only what the job says of its evaluation holdout (here: why none was held out)
    assert set(kinds[1 : kinds.index("started")]) <= {"evaluation_holdout"}
    assert "metrics" in kinds
    metrics = [e["data"] for e in events if e["kind"] == "metrics"]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == job["progress"]["total_steps"]
    later = client.get(f"/v1/jobs/{job['id']}/events", params={"after": events[1]["id"]}).json()
    assert [e["id"] for e in later] == [e["id"] for e in events[2:]]


def test_untrained_task_answers_409(client: TestClient) -> None:
    create_task(client, "fresh")
    response = client.post("/v1/infer", json={"task": "fresh", "inputs": ["x"]})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "task_not_trained"
    assert "POST /v1/jobs" in response.json()["error"]["message"]


def test_generation_task_trains_and_generates(client: TestClient) -> None:
    client.post("/v1/tasks", json={"name": "echo", "kind": "generation"})
    dataset = create_dataset(client, [{"input": f"say {w}", "output": w} for w in ["yes", "no", "ok", "hi"] * 3])
    job = wait_for_job(client, start_job(client, "echo", dataset["id"], steps=5)["id"])
    assert job["status"] == "succeeded", job
    response = client.post("/v1/infer", json={"task": "echo", "inputs": ["say yes", "say no"], "max_new_tokens": 4})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert len(outputs) == 2 and all(isinstance(o["text"], str) for o in outputs)


def test_dataset_labels_must_be_declared_by_the_task(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, [{"input": "x", "output": "positive"}, {"input": "y", "output": "meh"}])
    response = client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": dataset["id"]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "labels_not_declared" and "'meh'" in error["message"]
    assert error["details"]["examples"] == [2]
    assert client.get("/v1/jobs").json() == []


def test_out_of_range_hyperparameters_are_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(4))
    for hyper in (
        {"steps": 0},
        {"learning_rate": -1},
        {"num_virtual_tokens": 100000},
        {"init": "magic"},
        {"unknown": 1},
    ):
        response = client.post(
            "/v1/jobs", json={"task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": hyper}
        )
        assert response.status_code == 422, (hyper, response.text)
        assert response.json()["error"]["code"] == "validation_error"
        assert "hyperparameters" in response.json()["error"]["message"]


def test_unknown_ids_in_a_job_are_404(client: TestClient) -> None:
    create_task(client, "sentiment")
    response = client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": 424242})
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"
    dataset = create_dataset(client, toy_examples(4))
    response = client.post("/v1/jobs", json={"task": "nope", "dataset_id": dataset["id"]})
    assert response.status_code == 404 and response.json()["error"]["code"] == "task_not_found"
    assert client.get("/v1/jobs/424242").status_code == 404
    assert client.post("/v1/jobs/424242/cancel").status_code == 404


def test_input_longer_than_the_context_is_refused(client: TestClient) -> None:
    create_task(client, "sentiment")
    long_text = "good " * 400
    dataset = create_dataset(client, [{"input": long_text, "output": "positive"}, *toy_examples(4)])
    response = client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": dataset["id"]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "input_too_long"
    assert response.json()["error"]["details"]["example"] == 1


def test_inference_input_longer_than_the_context_is_refused(client: TestClient) -> None:
    train_task(client)
    response = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["fine", "good " * 400]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "input_too_long" and response.json()["error"]["details"]["index"] == 1


def test_cancelling_a_queued_job_means_it_never_runs(client_with) -> None:  # type: ignore[no-untyped-def]
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(8))
    job = start_job(client, "sentiment", dataset["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    assert client.get("/v1/tasks/sentiment").json()["status"] == "untrained"


def test_cancelling_a_running_job_stops_it_without_a_prompt(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(40))
    job = start_job(client, "sentiment", dataset["id"], steps=100000, eval_every=100000)
    wait_for_step(client, job["id"], 2)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    finished = wait_for_job(client, job["id"], timeout=30)
    assert finished["status"] == "cancelled" and finished["result_prompt_id"] is None
    assert client.get("/v1/prompts").json() == []
    assert [e["kind"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()][-1] == "cancelled"


def test_deleting_a_task_while_it_trains_stops_the_job_and_stores_nothing(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(40))
    job = start_job(client, "sentiment", dataset["id"], steps=100000, eval_every=100000)
    wait_for_step(client, job["id"], 1)
    assert client.delete("/v1/tasks/sentiment").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    # the worker notices at its next beat and goes back to the queue, free for the next job
    create_task(client, "next")
    follow_up = wait_for_job(client, start_job(client, "next", dataset["id"], steps=2)["id"], timeout=60)
    assert follow_up["status"] == "succeeded"
    assert [p["task"] for p in client.get("/v1/prompts").json()] == [follow_up["task"]]


def test_a_trained_task_keeps_serving_while_it_retrains(client_with) -> None:  # type: ignore[no-untyped-def]
    client = client_with(run_worker=True)
    _task, first = train_task(client)
    dataset = create_dataset(client, toy_examples(40))
    job = start_job(client, "sentiment", dataset["id"], steps=100000, eval_every=100000)
    wait_for_step(client, job["id"], 1)
    assert client.get("/v1/tasks/sentiment").json()["status"] == "training"
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).json()
    assert served["prompt_id"] == first["result_prompt_id"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    wait_for_job(client, job["id"])

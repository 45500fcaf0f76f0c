"""Bad input of every kind answers 4xx with a stable code, never 500 (each case once answered 500)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, toy_examples

HUGE = 2**63
BIG = 2**31


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", f"/v1/prompts/{HUGE}"),
        ("GET", f"/v1/prompts/{BIG}"),
        ("DELETE", f"/v1/prompts/{HUGE}"),
        ("POST", f"/v1/prompts/{HUGE}/activate"),
        ("GET", f"/v1/jobs/{HUGE}"),
        ("GET", f"/v1/jobs/{BIG}/events"),
        ("POST", f"/v1/jobs/{HUGE}/cancel"),
        ("GET", f"/v1/datasets/{HUGE}"),
        ("DELETE", f"/v1/datasets/{BIG}"),
        ("GET", f"/v1/tasks/{HUGE}"),
        ("GET", f"/v1/tasks/{BIG}"),
        ("GET", "/v1/tasks/%C2%B2"),
        ("DELETE", "/v1/tasks/%C2%B2"),
        ("GET", f"/v1/prompts?offset={HUGE}"),
        ("GET", f"/v1/jobs?offset={BIG}"),
        ("GET", f"/v1/tasks?offset={HUGE}"),
        ("GET", f"/v1/prompts?task={HUGE}"),
        ("GET", "/v1/prompts?task=%C2%B2"),
        ("GET", "/v1/jobs/1/events?after=" + str(HUGE)),
    ],
)
def test_out_of_range_ids_and_odd_digits_are_4xx(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["error"]["code"]


def _bodies(dataset_id: int) -> list[tuple[str, object]]:
    surrogate = "bad \ud800 text"
    return [
        ("/v1/tasks", {"name": "a", "kind": "classification", "labels": ["x", surrogate]}),
        ("/v1/tasks", {"name": "b", "kind": "classification", "labels": ["x", "y\x00"]}),
        ("/v1/tasks", {"name": "c", "kind": "generation", "template": "T\x00 {input}"}),
        ("/v1/datasets", {"name": "n\x00", "examples": [{"input": "a", "output": "b"}]}),
        ("/v1/datasets", {"name": surrogate, "examples": [{"input": "a", "output": "b"}]}),
        ("/v1/infer", {"task": "sentiment", "inputs": [surrogate]}),
        ("/v1/infer", {"task": HUGE, "inputs": ["a"]}),
        ("/v1/infer", {"task": "²", "inputs": ["a"]}),
        ("/v1/jobs", {"task": "sentiment", "dataset_id": HUGE}),
        ("/v1/jobs", {"task": "sentiment", "dataset_id": dataset_id, "validation_dataset_id": BIG}),
        ("/v1/jobs", {"task": "sentiment", "dataset_id": dataset_id, "hyperparameters": {"seed": 2**64}}),
        ("/v1/jobs", {"task": "sentiment", "dataset_id": dataset_id, "hyperparameters": {"init_text": surrogate}}),
        ("/v1/embed", {"task": "sentiment", "inputs": [surrogate]}),
    ]


def test_bodies_with_unstorable_text_or_out_of_range_numbers_are_4xx(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(4))
    for path, body in _bodies(dataset["id"]):
        # json.dumps escapes a lone surrogate as "\ud800", as a client sending one would
        response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
        assert response.json()["error"]["code"]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"name": "x", "kind": "generation", "n": ' + b"9" * 5000 + b"}",
        b'{"task": "sentiment", "dataset_id": 1, "hyperparameters": {"max_grad_norm": 1e999}}',
        b"not json",
    ],
    ids=["nested 100k deep", "5000-digit integer", "1e999", "not json"],
)
def test_unparsable_or_unrepresentable_json_is_a_422(client: TestClient, raw: bytes) -> None:
    for path in ("/v1/tasks", "/v1/jobs"):
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.status_code, response.text[:300])
        assert response.json()["error"]["code"] in ("invalid_json", "validation_error")


def test_an_init_the_task_cannot_give_is_refused_before_queueing(client: TestClient) -> None:
    create_task(client, "echo", kind="generation", labels=[], template="Say: {input}\nAnswer:")
    dataset = create_dataset(client, [{"input": "a", "output": "a"}, {"input": "b", "output": "b"}])
    body = {"task": "echo", "dataset_id": dataset["id"], "hyperparameters": {"init": "labels"}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and response.json()["error"]["code"] == "init_prompt_invalid"
    assert client.get("/v1/jobs").json() == []


def test_a_task_with_too_many_labels_is_refused_and_duplicates_are_named(client: TestClient) -> None:
    labels = [f"label{i}" for i in range(40_000)]
    response = client.post("/v1/tasks", json={"name": "many", "kind": "classification", "labels": labels})
    assert response.status_code == 422 and "1000" in response.json()["error"]["message"]
    duplicated = [f"label{i}" for i in range(999)] + ["label0"]
    response = client.post("/v1/tasks", json={"name": "dup", "kind": "classification", "labels": duplicated})
    assert response.status_code == 422 and response.json()["error"]["code"] == "duplicate_labels"


def test_a_dataset_body_with_a_key_twice_is_refused_not_silently_relabeled(client: TestClient) -> None:
    raw = b'{"name": "d", "examples": [{"input": "a", "output": "yes", "output": "no"}]}'
    response = client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_json"
    assert '"output" appears twice' in response.json()["error"]["message"]
    deep = b'{"name": "d", "examples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post("/v1/datasets", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "nested too deeply" in response.json()["error"]["message"]
    assert client.get("/v1/datasets").json() == []


def test_an_upload_named_with_unstorable_text_is_refused(client: TestClient) -> None:
    data = b'{"input": "a", "output": "b"}\n'
    response = client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, data={"name": "bad\x00name"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_name", response.text
    assert client.get("/v1/datasets").json() == []

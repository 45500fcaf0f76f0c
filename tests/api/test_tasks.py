from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import create_task


def test_created_task_is_listed_and_found_by_id_or_name(client: TestClient) -> None:
    task = create_task(client, "sentiment")
    assert task["status"] == "untrained" and task["active_prompt_id"] is None
    assert task["template"] == "Review: {input}\nSentiment:"
    assert [t["name"] for t in client.get("/v1/tasks").json()] == ["sentiment"]
    assert client.get(f"/v1/tasks/{task['id']}").json()["name"] == "sentiment"
    assert client.get("/v1/tasks/sentiment").json()["id"] == task["id"]


def test_default_template_depends_on_kind(client: TestClient) -> None:
    gen = client.post("/v1/tasks", json={"name": "echo", "kind": "generation"}).json()
    assert "{input}" in gen["template"] and gen["labels"] == []


def test_duplicate_task_name_is_a_conflict(client: TestClient) -> None:
    create_task(client, "dup")
    response = client.post("/v1/tasks", json={"name": "dup", "kind": "classification", "labels": ["a", "b"]})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "task_name_taken"


def test_task_definition_errors_say_what_to_fix(client: TestClient) -> None:
    cases = [
        ({"name": "x", "kind": "classification", "labels": ["only"]}, "labels_required"),
        ({"name": "x", "kind": "classification", "labels": ["a", "a"]}, "duplicate_labels"),
        ({"name": "x", "kind": "generation", "labels": ["a", "b"]}, "labels_not_allowed"),
        ({"name": "x", "kind": "classification", "labels": ["a", "b"], "template": "no slot"}, "invalid_template"),
        ({"name": "123", "kind": "generation"}, "validation_error"),
        ({"name": "x", "kind": "regression"}, "validation_error"),
        ({"name": "x", "kind": "generation", "colour": "red"}, "validation_error"),
    ]
    for body, code in cases:
        response = client.post("/v1/tasks", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (body, error)
        assert error["message"]
    assert client.get("/v1/tasks").json() == []


def test_unknown_task_is_404_with_a_hint(client: TestClient) -> None:
    for ref in ("nope", "999"):
        response = client.get(f"/v1/tasks/{ref}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"
        assert "GET /v1/tasks" in response.json()["error"]["message"]


def test_deleted_task_is_gone(client: TestClient) -> None:
    create_task(client, "gone")
    assert client.delete("/v1/tasks/gone").status_code == 204
    assert client.get("/v1/tasks/gone").status_code == 404
    assert client.delete("/v1/tasks/gone").status_code == 404

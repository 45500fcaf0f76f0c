"""Ids are never handed out twice, on SQLite and PostgreSQL: a deleted row's id never names a new row."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, toy_examples, train_task


def test_the_id_of_a_deleted_newest_row_is_never_given_to_the_next(client: TestClient) -> None:
    first = create_dataset(client, toy_examples(4))
    assert client.delete(f"/v1/datasets/{first['id']}").status_code == 204
    assert create_dataset(client, toy_examples(4))["id"] > first["id"]

    task = create_task(client, "once")
    assert client.delete("/v1/tasks/once").status_code == 204
    assert create_task(client, "once")["id"] > task["id"]


def test_a_retrained_prompt_never_takes_the_id_of_the_deleted_one(client: TestClient) -> None:
    _, job = train_task(client, "sentiment", steps=2, eval_every=2)
    old = job["result_prompt_id"]
    assert client.delete(f"/v1/prompts/{old}").status_code == 204
    _, again = train_task(client, "sentiment-2", steps=2, eval_every=2)
    assert again["result_prompt_id"] > old and again["id"] > job["id"]

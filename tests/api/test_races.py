"""Requests that race for the same rows end consistently, with no 500 (PostgreSQL once answered 500 here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import DEFAULT_TENANT
from app.db.repositories import scope_session
from app.errors import NotFound
from app.services.inference import infer
from app.services.tasks import resolve_task
from tests.api.helpers import create_dataset, create_task, start_job, toy_examples, train_task, wait_for_job


def test_a_job_and_a_delete_of_its_dataset_never_both_win(client_with: Callable[..., TestClient]) -> None:
    # No worker: a queued job stays unfinished (a worker could finish it before the delete, and then both win).
    client = client_with(run_worker=False)
    create_task(client, "sentiment")
    for _ in range(12):
        dataset = create_dataset(client, toy_examples(4))
        results: dict[str, Any] = {}
        start = threading.Barrier(2)
        body = {"task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": {"steps": 1, "eval_every": 1}}
        calls = {
            "job": lambda body=body: client.post("/v1/jobs", json=body),
            "delete": lambda dataset_id=dataset["id"]: client.delete(f"/v1/datasets/{dataset_id}"),
        }

        def race(
            name: str, results: dict[str, Any] = results, start: threading.Barrier = start, calls: Any = calls
        ) -> None:
            start.wait()
            results[name] = calls[name]()

        threads = [threading.Thread(target=race, args=(name,)) for name in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        job, deleted = results["job"], results["delete"]
        assert (job.status_code, deleted.status_code) in ((202, 409), (404, 204)), (job.text, deleted.text)
        if job.status_code == 202:
            assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
            assert deleted.json()["error"]["code"] == "dataset_in_use"
        else:
            assert job.json()["error"]["code"] == "dataset_not_found"


def test_a_request_that_chose_a_version_deleted_meanwhile_is_served_by_the_fallback(client: TestClient) -> None:
    _, first = train_task(client)
    dataset = create_dataset(client, toy_examples(40))
    second = wait_for_job(client, start_job(client, "sentiment", dataset["id"])["id"])
    assert second["status"] == "succeeded"
    state = client.app.state  # type: ignore[attr-defined]
    with state.read_session_factory() as session:
        scope_session(session, DEFAULT_TENANT)
        stale = resolve_task(session, "sentiment")  # read while the second version is active
        assert stale.active_prompt_id == second["result_prompt_id"]
        assert client.delete(f"/v1/prompts/{second['result_prompt_id']}").status_code == 204
        result = infer(session, state.runtime, stale, ["good film"], max_new_tokens=4, stop=[])
    assert result.prompt_id == first["result_prompt_id"]
    assert set(result.outputs[0]["scores"]) == {"positive", "negative"}


def test_a_request_for_a_task_deleted_meanwhile_is_a_404(client: TestClient) -> None:
    train_task(client)
    state = client.app.state  # type: ignore[attr-defined]
    with state.read_session_factory() as session:
        scope_session(session, DEFAULT_TENANT)
        stale = resolve_task(session, "sentiment")
        assert client.delete("/v1/tasks/sentiment").status_code == 204
        with pytest.raises(NotFound) as refused:
            infer(session, state.runtime, stale, ["good film"], max_new_tokens=4, stop=[])
    assert refused.value.code == "task_not_found"

"""Requests that race for the same rows end consistently, with no 500 (PostgreSQL once answered 500 here)."""

from __future__ import annotations

import threading
from typing import Any

from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, toy_examples


def test_a_job_and_a_delete_of_its_dataset_never_both_win(client: TestClient) -> None:
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

"""Watching a job: its training curve as a series (GET /v1/jobs/{id}/metrics), and its events and points as
server-sent events (GET /v1/jobs/{id}/stream) that resume after Last-Event-ID, read from the database by a server
that is not the one training."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import create_dataset, create_task, start_job, toy_examples, wait_for_job
from tests.live_server import ADMIN_KEY, sse_events

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _stream(url: str, job_id: int, last_event_id: str | None = None) -> list[dict[str, str]]:
    headers = dict(AUTH, **({"Last-Event-ID": last_event_id} if last_event_id else {}))
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/stream", headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def _items(events: list[dict[str, str]]) -> set[tuple[str, int]]:
    """What events carry: ("event", job event id) or ("metric", metric row id, the id's second part)."""
    items = set()
    for e in events:
        if e["event"] == "event":
            items.add(("event", json.loads(e["data"])["id"]))
        elif e["event"] == "metric":
            items.add(("metric", int(e["id"].split(".")[1])))
    return items


@pytest.fixture
def trainer(live_server_with: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server_with(), headers=AUTH, timeout=120) as client:
        yield client


def test_the_curve_is_recorded_per_step(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(24))
    job = wait_for_job(client, start_job(client, "sentiment", dataset["id"], steps=12, eval_every=5)["id"])
    assert job["status"] == "succeeded", job
    response = client.get(f"/v1/jobs/{job['id']}/metrics")
    assert response.status_code == 200
    points = response.json()
    assert [p["step"] for p in points] == list(range(13))  # step 0: the initial prompt's evaluation
    assert {p["attempt"] for p in points} == {1}
    assert points[0]["loss"] is None and points[0]["val_loss"] is not None
    assert all(p["loss"] is not None and p["learning_rate"] > 0 for p in points[1:])
    evaluated = [p["step"] for p in points if p["val_loss"] is not None]
    assert evaluated == [0, 5, 10, 12] and all(p["val_score"] is not None for p in points if p["val_loss"] is not None)
    assert [p["seconds"] for p in points] == sorted(p["seconds"] for p in points)
    assert points[-1]["loss"] == pytest.approx(job["progress"]["loss"])
    assert client.get("/v1/jobs/999/metrics").json()["error"]["code"] == "job_not_found"


def test_stream_from_another_server_shows_the_job_live_and_resumes(
    trainer: httpx.Client, live_server_with: Callable[..., str]
) -> None:
    watcher = live_server_with(run_worker=False, job_stream_poll_seconds=0.05)  # shares the database only
    create_task(trainer, "sentiment")  # type: ignore[arg-type]
    dataset = create_dataset(trainer, toy_examples(24))  # type: ignore[arg-type]
    job_id = start_job(trainer, "sentiment", dataset["id"], steps=30, eval_every=10)["id"]  # type: ignore[arg-type]

    events = _stream(watcher, job_id)
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"])["status"] == "succeeded"
    kinds = [json.loads(e["data"])["kind"] for e in events if e["event"] == "event"]
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "succeeded"
    steps = [json.loads(e["data"])["step"] for e in events if e["event"] == "metric"]
    assert sorted(set(steps)) == list(range(31))
    assert [e["event"] for e in events].count("job") >= 2  # queued or running, then succeeded at least
    # the stream and the series agree
    series = trainer.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in series] == list(range(31))

    # resuming after any event gives exactly what came after it: nothing twice, nothing lost
    sent = [e for e in events if "id" in e]
    assert len({e["id"] for e in sent}) == len(sent)
    middle = len(sent) // 2
    resumed = _stream(watcher, job_id, last_event_id=sent[middle]["id"])
    assert _items(sent[: middle + 1]) | _items(resumed) == _items(sent)
    assert not _items(sent[: middle + 1]) & _items(resumed)
    assert resumed[-1]["event"] == "end"
    assert _items(_stream(watcher, job_id, last_event_id=sent[-1]["id"])) == set()


def test_stream_refusals(trainer: httpx.Client) -> None:
    assert trainer.get("/v1/jobs/999/stream").json()["error"]["code"] == "job_not_found"
    create_task(trainer, "sentiment")  # type: ignore[arg-type]
    dataset = create_dataset(trainer, toy_examples(8))  # type: ignore[arg-type]
    job_id = start_job(trainer, "sentiment", dataset["id"], steps=2)["id"]  # type: ignore[arg-type]
    response = trainer.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_last_event_id"


def test_a_stream_closes_after_its_time_with_where_to_resume(live_server_with: Callable[..., str]) -> None:
    url = live_server_with(run_worker=False, job_stream_max_seconds=0.3, job_stream_poll_seconds=0.05)
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        create_task(client, "sentiment")  # type: ignore[arg-type]
        dataset = create_dataset(client, toy_examples(8))  # type: ignore[arg-type]
        job_id = start_job(client, "sentiment", dataset["id"], steps=2)["id"]  # type: ignore[arg-type]
    events = _stream(url, job_id)  # no worker: the job stays queued
    assert events[0]["event"] == "job" and json.loads(events[0]["data"])["status"] == "queued"
    assert events[-1]["event"] == "timeout"
    last_id = [e["id"] for e in events if "id" in e][-1]
    assert json.loads(events[-1]["data"])["resume_with_last_event_id"] == last_id
    assert [e["event"] for e in _stream(url, job_id, last_event_id=last_id)] == ["job", "timeout"]

"""GET /metrics: Prometheus text that the client library's own parser reads, with the figures the service did."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.metrics import OTHER, TaskLabels
from tests.api.helpers import train_task
from tests.api.test_keys import ADMIN_KEY, as_key, new_key


def _samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_what_was_served(client: TestClient) -> None:
    _, job = train_task(client, "sentiment")
    for inputs in (["good"], ["bad", "awful"], ["fine", "nice", "sad"]):
        assert client.post("/v1/infer", json={"task": "sentiment", "inputs": inputs}).status_code == 200
    assert client.post("/v1/infer", json={"task": "nope", "inputs": ["x"]}).status_code == 404
    assert client.post("/v1/completions", json={"model": "sentiment", "prompt": "good"}).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200

    samples = _samples(client)
    infer = {"method": "POST", "route": "/v1/infer"}
    assert _value(samples, "promptbank_http_requests_total", **infer, status="200") == 3
    assert _value(samples, "promptbank_http_requests_total", **infer, status="404") == 1
    assert _value(samples, "promptbank_http_request_duration_seconds_count", **infer) == 4
    # routes are templates: an id never becomes a label value
    assert _value(samples, "promptbank_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200")
    assert not [key for key in samples if ("route", f"/v1/jobs/{job['id']}") in key[1]]
    assert _value(samples, "promptbank_inference_rows_total", task="sentiment") == 1 + 2 + 3 + 1
    assert (
        _value(samples, "promptbank_inference_requests_total", route="/v1/completions", task="sentiment", status="200")
        == 1
    )
    assert _value(samples, "promptbank_inference_duration_seconds_count", task="sentiment") == 4
    assert _value(samples, "promptbank_jobs", status="succeeded") == 1
    assert _value(samples, "promptbank_jobs", status="running") == 0
    assert _value(samples, "promptbank_database_up") == 1
    assert _value(samples, "promptbank_engine_rows_total") >= 7
    assert _value(samples, "promptbank_engine_batches_total") >= 1
    assert _value(samples, "promptbank_prompt_pool_entries") == 1
    assert _value(samples, "promptbank_prompt_pool_misses_total") >= 1
    assert _value(samples, "promptbank_prompt_pool_hits_total") >= 3


def test_metrics_need_the_admin_scope(client_with: Callable[..., TestClient]) -> None:
    admin = as_key(client_with(admin_key=ADMIN_KEY), ADMIN_KEY)
    assert admin.get("/metrics").status_code == 200
    reader = as_key(admin, new_key(admin, "acme", ["read", "infer"]))
    response = reader.get("/metrics")
    assert response.status_code == 403 and response.json()["error"]["code"] == "missing_scope"


def test_task_labels_stay_bounded_and_name_the_busiest() -> None:
    labels = TaskLabels(top=3)
    for _ in range(50):
        assert labels("busy") == "busy"
    seen = {labels(f"task-{i}") for i in range(500)}
    assert len(seen - {OTHER}) <= 2 * 3 - 1 and OTHER in seen
    assert labels("busy") == "busy"  # a labelled task keeps its series

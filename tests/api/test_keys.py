"""API keys, scopes, single-user mode, rate limits, quotas, the audit log, CORS and what docs and health reveal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api.routes import datasets, health, infer, jobs, keys, prompts, tasks
from app.config import Settings
from tests.api.helpers import FAST, create_dataset, create_task, toy_examples, train_task

ADMIN_KEY = "pb_admin-key-for-tests-0123456789"


def as_key(client: TestClient, key: str | None, host: str = "testclient") -> TestClient:
    """Another client of the same running app, sending `key` (or nothing), from `host`."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(client.app, base_url=str(client.base_url), headers=headers, client=(host, 50000))


def new_key(admin: TestClient, tenant: str, scopes: list[str], **extra: Any) -> str:
    response = admin.post("/v1/keys", json={"tenant": tenant, "scopes": scopes, **extra})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= {"id", "key", "tenant", "scopes"}
    assert body["tenant"] == tenant and sorted(body["scopes"]) == sorted(scopes)
    return body["key"]  # type: ignore[no-any-return]


def test_without_keys_the_service_is_open_to_local_clients_only(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    assert client.get("/v1/tasks").status_code == 200
    remote = as_key(client, None, host="203.0.113.7")
    response = remote.get("/v1/tasks")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "auth_required"
    assert "PROMPTBANK_ADMIN_KEY" in response.json()["error"]["message"]


def test_single_user_mode_answers_remote_clients_only_when_told_to(client_with: Callable[..., TestClient]) -> None:
    client = client_with(allow_unauthenticated=True)
    assert as_key(client, None, host="203.0.113.7").get("/v1/tasks").status_code == 200


def test_the_admin_key_turns_auth_on(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    missing = client.get("/v1/tasks")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "auth_required"
    wrong = as_key(client, "pb_not-a-key").get("/v1/tasks")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_key"
    basic = client.get("/v1/tasks", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and basic.json()["error"]["code"] == "invalid_authorization"
    assert as_key(client, ADMIN_KEY).get("/v1/tasks").status_code == 200


def test_a_created_key_is_shown_once_works_and_stops_working_when_revoked(
    client_with: Callable[..., TestClient],
) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    admin = as_key(client, ADMIN_KEY)
    created = admin.post("/v1/keys", json={"tenant": "acme", "scopes": ["read", "train"], "name": "ci"})
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]
    listed = admin.get("/v1/keys").json()
    assert [k["id"] for k in listed] == [key_id]
    assert "key" not in listed[0] and key.startswith(listed[0]["prefix"]) and listed[0]["revoked_at"] is None
    assert key not in admin.get("/v1/keys").text
    user = as_key(client, key)
    assert user.post("/v1/tasks", json={"name": "t", "kind": "generation"}).status_code == 201
    assert admin.delete(f"/v1/keys/{key_id}").status_code == 204
    revoked = user.get("/v1/tasks")
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_key"
    assert admin.get("/v1/keys").json()[0]["revoked_at"] is not None
    assert admin.delete("/v1/keys/999999").status_code == 404


def test_a_key_without_the_scope_gets_403(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    admin = as_key(client, ADMIN_KEY)
    reader = as_key(client, new_key(admin, "acme", ["read"]))
    inferrer = as_key(client, new_key(admin, "acme", ["infer"]))
    assert reader.get("/v1/tasks").status_code == 200
    refused = reader.post("/v1/tasks", json={"name": "t", "kind": "generation"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "missing_scope" and '"train"' in refused.json()["error"]["message"]
    assert reader.post("/v1/infer", json={"task": "t", "inputs": ["x"]}).status_code == 403
    assert inferrer.get("/v1/tasks").status_code == 403
    assert inferrer.post("/v1/infer", json={"task": "t", "inputs": ["x"]}).status_code == 404  # let in; no task
    for call in (reader.get("/v1/keys"), reader.get("/v1/stats"), reader.get("/v1/audit")):
        assert call.status_code == 403
    assert admin.get("/v1/stats").status_code == 200


def test_creating_the_first_key_ends_single_user_mode(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    key = new_key(client, "default", ["read", "infer", "train", "admin"])
    assert client.get("/v1/tasks").status_code == 401
    assert as_key(client, key).get("/v1/tasks").status_code == 200


def test_key_requests_are_validated(client_with: Callable[..., TestClient]) -> None:
    admin = as_key(client_with(admin_key=ADMIN_KEY), ADMIN_KEY)
    for body in (
        {"tenant": "bad tenant!", "scopes": ["read"]},
        {"tenant": "acme", "scopes": ["write"]},
        {"tenant": "acme", "scopes": []},
        {"tenant": "acme"},
        {"tenant": "acme", "scopes": ["read"], "limits": {"requests_per_second": -1}},
    ):
        response = admin.post("/v1/keys", json=body)
        assert response.status_code == 422, body
    assert admin.get("/v1/keys?tenant=%00").status_code == 422


def test_a_key_over_its_rate_gets_429_with_retry_after(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    key = new_key(as_key(client, ADMIN_KEY), "acme", ["read"], limits={"requests_per_second": 0.5})
    user = as_key(client, key)
    answers = [user.get("/v1/tasks") for _ in range(3)]
    assert [a.status_code for a in answers[:1]] == [200]
    limited = answers[-1]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert as_key(client, ADMIN_KEY).get("/v1/tasks").status_code == 200  # other callers are not slowed


def test_quotas_on_jobs_storage_and_dataset_size_answer_429(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY, run_worker=False)
    admin = as_key(client, ADMIN_KEY)
    user = as_key(client, new_key(admin, "acme", ["read", "train"], limits={"active_jobs": 1, "stored_bytes": 20_000}))
    create_task(user, "sentiment")
    dataset = create_dataset(user, toy_examples(40))
    job = {"type": "train", "task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": FAST}
    assert user.post("/v1/jobs", json=job).status_code == 202
    second = user.post("/v1/jobs", json=job)
    assert second.status_code == 429 and second.json()["error"]["code"] == "job_quota_exceeded"
    assert "retry-after" in second.headers
    big = user.post("/v1/datasets", json={"name": "big", "examples": toy_examples(600)})
    assert big.status_code == 429 and big.json()["error"]["code"] == "storage_quota_exceeded"
    assert len(user.get("/v1/datasets").json()) == 1  # nothing stored
    small = as_key(client, new_key(admin, "other", ["train"], limits={"dataset_bytes": 100}))
    refused = small.post("/v1/datasets", json={"name": "d", "examples": toy_examples(10)})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "dataset_quota_exceeded"


def test_deletes_activations_and_key_changes_are_in_the_audit_log(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    admin = as_key(client, ADMIN_KEY)
    created = admin.post("/v1/keys", json={"tenant": "acme", "scopes": ["read", "train"]}).json()
    user = as_key(client, created["key"])
    _, job = train_task(user, "sentiment")
    assert user.post(f"/v1/prompts/{job['result_prompt_id']}/activate").status_code == 200
    assert user.delete(f"/v1/prompts/{job['result_prompt_id']}").status_code == 204
    assert user.delete("/v1/tasks/sentiment").status_code == 204
    assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
    log = admin.get("/v1/audit").json()
    seen = [(e["action"], e["resource"], e["actor"]) for e in log]
    actor = f"key {created['id']}"
    assert seen == [
        ("create", "key", "admin key"),
        ("activate", "prompt", actor),
        ("delete", "prompt", actor),
        ("delete", "task", actor),
        ("revoke", "key", "admin key"),
    ]
    assert {e["tenant"] for e in log if e["actor"] == actor} == {"acme"}
    assert [e["action"] for e in admin.get("/v1/audit", params={"after": log[2]["id"]}).json()] == ["delete", "revoke"]


def test_cors_is_closed_unless_origins_are_configured(client_with: Callable[..., TestClient]) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    closed = client_with()
    answer = closed.options("/v1/tasks", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    assert (
        "access-control-allow-origin" not in closed.get("/v1/tasks", headers={"Origin": "https://evil.example"}).headers
    )


def test_configured_cors_origins_may_call(client_with: Callable[..., TestClient]) -> None:
    client = client_with(cors_origins=["https://app.example"])
    allowed = client.options(
        "/v1/tasks", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options(
        "/v1/tasks", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_docs_can_be_put_behind_keys(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY, public_docs=False)
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs").status_code == 401
    reader = as_key(client, new_key(as_key(client, ADMIN_KEY), "acme", ["read"]))
    assert reader.get("/openapi.json").json()["info"]["title"] == "promptbank"
    assert reader.get("/docs").status_code == 200


def test_health_details_are_for_admins_once_auth_is_on(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json()["status"] == "ok"
    assert anonymous.json()["model"]["loaded"] is True and anonymous.json()["model"]["fingerprint"] is None
    assert as_key(client, "pb_wrong").get("/healthz").json()["model"]["fingerprint"] is None
    assert as_key(client, ADMIN_KEY).get("/healthz").json()["model"]["fingerprint"]


def test_every_v1_route_names_the_scope_it_needs() -> None:
    def scopes(dependant: Any) -> set[str]:
        found = {getattr(dependant.call, "scope", None)} - {None}
        for sub in dependant.dependencies:
            found |= scopes(sub)
        return found

    routers = (datasets, health, infer, jobs, keys, prompts, tasks)
    routes = [r for m in routers for r in m.router.routes if isinstance(r, APIRoute) and r.path.startswith("/v1")]
    assert len(routes) > 20
    unscoped = [f"{sorted(r.methods)} {r.path}" for r in routes if not scopes(r.dependant)]
    assert unscoped == []


def test_an_admin_key_shorter_than_32_characters_refuses_to_start() -> None:
    short = "pb_short-admin-key-0123456789ab"  # 31 characters
    with pytest.raises(ValidationError) as refused:
        Settings(admin_key=short)
    assert "needs at least 32" in str(refused.value) and short not in str(refused.value)
    assert Settings(admin_key=short + "c").admin_key is not None


def test_failed_keys_are_throttled_per_client_address(
    client_with: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    guesser = as_key(client, "pb_guess-0000", host="198.51.100.9")
    with caplog.at_level(logging.WARNING, logger="app.api.failed_keys"):
        answers = [guesser.get("/v1/tasks") for _ in range(10)]
    assert [a.json()["error"]["code"] for a in answers] == ["invalid_key"] * 10
    throttled = guesser.get("/v1/tasks")
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_failed_keys"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    # a right key from that address is refused too (it would tell a guesser it found one); others are served
    assert as_key(client, ADMIN_KEY, host="198.51.100.9").get("/v1/tasks").status_code == 429
    assert as_key(client, ADMIN_KEY, host="198.51.100.10").get("/v1/tasks").status_code == 200
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 10 and all("198.51.100.9" in r.getMessage() for r in failures)
    assert not any("pb_guess" in r.getMessage() for r in caplog.records)


def test_a_throttled_address_is_served_again_after_the_window(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY, failed_key_limit=2, failed_key_window_seconds=1.0)
    assert [as_key(client, "pb_wrong").get("/v1/tasks").status_code for _ in range(3)] == [401, 401, 429]
    time.sleep(1.1)
    assert as_key(client, ADMIN_KEY).get("/v1/tasks").status_code == 200


def test_single_user_mode_ignores_whatever_key_is_sent(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    empty = as_key(client, "EMPTY")  # what OpenAI's client sends when told api_key="EMPTY"
    assert empty.get("/v1/tasks").status_code == 200
    assert empty.post("/v1/tasks", json={"name": "t", "kind": "generation"}).status_code == 201
    assert as_key(client, "EMPTY", host="203.0.113.7").get("/v1/tasks").status_code == 401  # still local only
    key = new_key(client, "default", ["read"])  # keys exist from now on: an unknown key is refused
    refused = empty.get("/v1/tasks")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_key"
    assert as_key(client, key).get("/v1/tasks").status_code == 200

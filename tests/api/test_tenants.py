"""Two tenants on one service (SQLite and PostgreSQL): neither can list, read, infer with, train from, activate,
cancel or delete the other's datasets, tasks, jobs, prompts and meta-initialisations; every attempt answers exactly
what the same request answers for something that does not exist (404 where it names a path), so nothing reveals
that the other's resources exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from tests.api.helpers import FAST, create_dataset, create_task, toy_examples, wait_for_job
from tests.api.test_keys import ADMIN_KEY, as_key, new_key

MISSING = 999_999
QUICK = {**FAST, "steps": 4, "eval_every": 2}
META = {
    "num_virtual_tokens": 4,
    "order": "first",
    "inner_steps": 1,
    "inner_lr": 0.5,
    "outer_steps": 2,
    "meta_batch": 2,
    "support_size": 4,
    "query_size": 4,
    "eval_every": 2,
}


def _succeeded(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def tenants(client_with: Callable[..., TestClient]) -> tuple[TestClient, TestClient, dict[str, Any]]:
    """Tenant a with a trained task, a dataset, a finished job, a queued job and a meta-initialisation; tenant b
    with a task of the same name and its own dataset. (a, b, a's ids)"""
    client = client_with(admin_key=ADMIN_KEY, key_requests_per_second=0)  # the test polls jobs fast
    admin = as_key(client, ADMIN_KEY)
    scopes = ["read", "infer", "train"]
    a, b = as_key(client, new_key(admin, "a", scopes)), as_key(client, new_key(admin, "b", scopes))
    create_task(a, "sentiment")
    create_task(a, "other")
    create_task(a, "third")
    data = create_dataset(a, toy_examples(24))
    job = _succeeded(a, {"type": "train", "task": "sentiment", "dataset_id": data["id"], "hyperparameters": QUICK})
    meta_tasks = [{"task": name, "dataset_id": data["id"]} for name in ("sentiment", "other", "third")]
    meta = _succeeded(a, {"type": "meta_init", "name": "a-init", "tasks": meta_tasks, "hyperparameters": META})
    create_task(b, "sentiment")  # names are per tenant: b may reuse a's
    b_data = create_dataset(b, toy_examples(24, seed=3))
    ids = {
        "task": a.get("/v1/tasks/sentiment").json()["id"],
        "dataset": data["id"],
        "job": job["id"],
        "prompt": job["result_prompt_id"],
        "meta": meta["result_prompt_id"],
        "b_dataset": b_data["id"],
    }
    return a, b, ids


def _same_as_missing(b: TestClient, method: str, path: str, body: Any, missing_path: str, missing_body: Any) -> None:
    """b's request on a's resource answers like the same request on a resource that does not exist."""
    foreign = b.request(method, path, json=body)
    missing = b.request(method, missing_path, json=missing_body)
    assert foreign.status_code == missing.status_code, (method, path, foreign.text, missing.text)
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"], (path, foreign.text)
    assert foreign.status_code in (404, 422), (path, foreign.text)


def test_tenants_cannot_reach_each_others_resources(tenants: tuple[TestClient, TestClient, dict[str, Any]]) -> None:
    a, b, ids = tenants
    task, dataset, job, prompt, meta = ids["task"], ids["dataset"], ids["job"], ids["prompt"], ids["meta"]
    # every path that names a resource of a
    for method, path, missing in [
        ("GET", f"/v1/tasks/{task}", f"/v1/tasks/{MISSING}"),
        ("GET", "/v1/tasks/other", "/v1/tasks/no-such-task"),
        ("PATCH", f"/v1/tasks/{task}", f"/v1/tasks/{MISSING}"),
        ("DELETE", "/v1/tasks/other", "/v1/tasks/no-such-task"),
        ("GET", f"/v1/datasets/{dataset}", f"/v1/datasets/{MISSING}"),
        ("DELETE", f"/v1/datasets/{dataset}", f"/v1/datasets/{MISSING}"),
        ("GET", f"/v1/jobs/{job}", f"/v1/jobs/{MISSING}"),
        ("GET", f"/v1/jobs/{job}/events", f"/v1/jobs/{MISSING}/events"),
        ("GET", f"/v1/jobs/{job}/metrics", f"/v1/jobs/{MISSING}/metrics"),
        ("GET", f"/v1/jobs/{job}/stream", f"/v1/jobs/{MISSING}/stream"),
        ("GET", f"/v1/prompts/{prompt}/export", f"/v1/prompts/{MISSING}/export"),
        ("GET", "/v1/models/other", "/v1/models/no-such-task"),
        ("POST", f"/v1/jobs/{job}/cancel", f"/v1/jobs/{MISSING}/cancel"),
        ("GET", f"/v1/prompts/{prompt}", f"/v1/prompts/{MISSING}"),
        ("GET", f"/v1/prompts/{meta}", f"/v1/prompts/{MISSING}"),
        ("POST", f"/v1/prompts/{prompt}/activate", f"/v1/prompts/{MISSING}/activate"),
        ("DELETE", f"/v1/prompts/{prompt}", f"/v1/prompts/{MISSING}"),
        ("DELETE", f"/v1/prompts/{meta}", f"/v1/prompts/{MISSING}"),
        ("GET", "/v1/prompts?task=other", "/v1/prompts?task=no-such-task"),
        ("GET", "/v1/jobs?task=other", "/v1/jobs?task=no-such-task"),
    ]:
        body = {"ensemble": None} if method == "PATCH" else None
        _same_as_missing(b, method, path, body, missing, body)
        assert b.request(method, path, json=body).status_code == 404, path
    # every body that names a resource of a
    infer = {"task": "other", "inputs": ["good"]}
    _same_as_missing(b, "POST", "/v1/infer", infer, "/v1/infer", {**infer, "task": "no-such-task"})
    _same_as_missing(b, "POST", "/v1/embed", infer, "/v1/embed", {**infer, "task": "no-such-task"})
    _same_as_missing(b, "POST", "/v1/infer", {**infer, "task": task}, "/v1/infer", {**infer, "task": MISSING})
    completion = {"model": "other", "prompt": "good"}
    _same_as_missing(
        b, "POST", "/v1/completions", completion, "/v1/completions", {**completion, "model": "no-such-task"}
    )
    assert "other" not in [model["id"] for model in b.get("/v1/models").json()["data"]]
    train = {"type": "train", "task": "sentiment", "dataset_id": ids["b_dataset"], "hyperparameters": QUICK}
    for field, value in [
        ("dataset_id", dataset),
        ("validation_dataset_id", dataset),
        ("hyperparameters", {**QUICK, "init": {"from_prompt": prompt}}),
        ("hyperparameters", {**QUICK, "init": {"from_prompt": meta}}),
    ]:
        wrong = value if not isinstance(value, int) else MISSING
        if isinstance(value, dict):
            wrong = {**QUICK, "init": {"from_prompt": MISSING}}
        _same_as_missing(b, "POST", "/v1/jobs", {**train, field: value}, "/v1/jobs", {**train, field: wrong})
    distill = {"type": "distill", "task": "sentiment", "dataset_id": ids["b_dataset"], "hyperparameters": QUICK}
    _same_as_missing(
        b,
        "POST",
        "/v1/jobs",
        {**distill, "teacher": {"prompts": [prompt]}},
        "/v1/jobs",
        {**distill, "teacher": {"prompts": [MISSING]}},
    )
    sources = [{"task": "sentiment", "dataset_id": ids["b_dataset"]}] * 2
    meta_job = {"type": "meta_init", "name": "x", "hyperparameters": META}
    _same_as_missing(
        b,
        "POST",
        "/v1/jobs",
        {**meta_job, "tasks": [*sources, {"task": task, "dataset_id": ids["b_dataset"]}]},
        "/v1/jobs",
        {**meta_job, "tasks": [*sources, {"task": MISSING, "dataset_id": ids["b_dataset"]}]},
    )
    # lists show only b's own
    assert [t["name"] for t in b.get("/v1/tasks").json()] == ["sentiment"]
    assert b.get("/v1/tasks/sentiment").json()["id"] != task
    assert [d["id"] for d in b.get("/v1/datasets").json()] == [ids["b_dataset"]]
    assert b.get("/v1/jobs").json() == []
    assert b.get("/v1/prompts").json() == [] and b.get("/v1/prompts?kind=meta_init").json() == []
    # and a's resources are all still there, untouched
    assert a.get(f"/v1/tasks/{task}").json()["active_prompt_id"] == prompt
    assert {t["name"] for t in a.get("/v1/tasks").json()} == {"sentiment", "other", "third"}
    assert a.get(f"/v1/datasets/{dataset}").status_code == 200
    assert a.get(f"/v1/jobs/{job}").json()["status"] == "succeeded"
    assert {p["id"] for p in a.get("/v1/prompts").json()} == {prompt, meta}
    assert a.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).status_code == 200


def test_init_auto_only_considers_the_tenants_own_prompts(
    tenants: tuple[TestClient, TestClient, dict[str, Any]],
) -> None:
    a, b, ids = tenants
    body = {"type": "train", "task": "sentiment", "dataset_id": ids["b_dataset"]}
    job = _succeeded(b, {**body, "hyperparameters": {**QUICK, "init": "auto"}})
    events = b.get(f"/v1/jobs/{job['id']}/events").json()
    candidates = next(e for e in events if e["kind"] == "init_candidates")["data"]["candidates"]
    assert candidates and all(c.get("prompt_id") is None for c in candidates), candidates  # only the text init
    mine = _succeeded(a, {**body, "dataset_id": ids["dataset"], "hyperparameters": {**QUICK, "init": "auto"}})
    events = a.get(f"/v1/jobs/{mine['id']}/events").json()
    seen = {c.get("prompt_id") for c in next(e for e in events if e["kind"] == "init_candidates")["data"]["candidates"]}
    assert {ids["prompt"], ids["meta"]} <= seen


def _keys_of(admin: TestClient, **params: str) -> list[tuple[str, bool]]:
    response = admin.get("/v1/keys", params=params)
    assert response.status_code == 200, response.text
    return [(k["tenant"], k["operator"]) for k in response.json()]


def test_a_tenants_admin_key_manages_only_its_own_tenants_keys_and_audit_log(
    client_with: Callable[..., TestClient],
) -> None:
    client = client_with(admin_key=ADMIN_KEY)
    operator = as_key(client, ADMIN_KEY)
    acme = as_key(client, new_key(operator, "acme", ["read", "admin"]))
    other_id = operator.post("/v1/keys", json={"tenant": "other", "scopes": ["read"]}).json()["id"]
    for tenant in ("default", "other"):  # no keys for another tenant, the operator's own included
        refused = acme.post("/v1/keys", json={"tenant": tenant, "scopes": ["read", "infer", "train", "admin"]})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "other_tenant", refused.text
        assert "operator" in refused.json()["error"]["message"]
    own = acme.post("/v1/keys", json={"tenant": "acme", "scopes": ["infer"]})
    assert own.status_code == 201
    assert _keys_of(acme) == [("acme", False), ("acme", False)]
    assert acme.get("/v1/keys", params={"tenant": "other"}).json()["error"]["code"] == "other_tenant"
    assert acme.delete(f"/v1/keys/{other_id}").json()["error"]["code"] == "key_not_found"  # as if it did not exist
    assert acme.delete(f"/v1/keys/{own.json()['id']}").status_code == 204
    assert {e["tenant"] for e in acme.get("/v1/audit").json()} == {"acme"}
    assert acme.get("/v1/audit", params={"tenant": "default"}).status_code == 403
    for service_wide in ("/metrics", "/v1/stats"):  # every tenant's task names and the engine's counters
        answer = acme.get(service_wide)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "operator_only"
    # the operator manages every tenant's
    assert sorted(_keys_of(operator)) == [("acme", False), ("acme", False), ("other", False)]
    assert {e["tenant"] for e in operator.get("/v1/audit").json()} == {"default", "acme"}
    assert operator.delete(f"/v1/keys/{other_id}").status_code == 204
    assert operator.get("/v1/stats").status_code == 200


def test_only_the_command_lines_admin_key_acts_across_tenants(
    client_with: Callable[..., TestClient],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PROMPTBANK_DATABASE_URL", database_url)
    monkeypatch.setenv("PROMPTBANK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PROMPTBANK_ADMIN_KEY", raising=False)

    def cli_key(*args: str) -> str:
        assert main(["keys", "create", *args]) == 0
        return capsys.readouterr().out.strip()

    client = client_with()
    operator = as_key(client, cli_key("--admin"))
    tenant_admin = as_key(client, cli_key("--scopes", "read,infer,train,admin"))  # every scope, not the operator
    assert new_key(operator, "acme", ["read", "admin"])
    refused = tenant_admin.post("/v1/keys", json={"tenant": "acme", "scopes": ["read"]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "other_tenant"
    assert _keys_of(operator) == [("default", True), ("default", False), ("acme", False)]
    operator_id = next(k["id"] for k in operator.get("/v1/keys").json() if k["operator"])
    revoke = tenant_admin.delete(f"/v1/keys/{operator_id}")  # in its tenant, but not its to revoke
    assert revoke.status_code == 403 and revoke.json()["error"]["code"] == "operator_key"
    assert main(["keys", "list"]) == 0
    assert "read,infer,train,admin (operator)" in capsys.readouterr().out

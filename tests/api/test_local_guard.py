"""Single-user mode answers this machine's clients, not a web page running on it: only a loopback (or allowed)
Host, and no state-changing request sent by another site's page (forged Host, Origin and Sec-Fetch-Site headers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import toy_examples
from tests.api.test_keys import ADMIN_KEY, as_key

LOCAL_HOSTS = ["localhost", "localhost:8000", "LOCALHOST.", "app.localhost:8000", "127.0.0.1", "127.6.5.4:80"]
FOREIGN_HOSTS = ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "0.0.0.0:8000", "localhost.evil.example"]
JSONL = "\n".join(json.dumps(e) for e in toy_examples(6)).encode()


def _upload(client: httpx.Client, **headers: str) -> httpx.Response:
    """The cross-site request a page can send without a preflight: a multipart form POST of a dataset."""
    return client.post(
        "/v1/datasets", files={"file": ("toy.jsonl", JSONL, "application/jsonl")}, data={"name": "toy"}, headers=headers
    )


def _refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_single_user_mode_answers_only_loopback_hosts(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    for host in [*LOCAL_HOSTS, "[::1]:8000", "[::1]"]:
        assert client.get("/v1/tasks", headers={"Host": host}).status_code == 200, host
    for host in FOREIGN_HOSTS:
        response = client.get("/v1/tasks", headers={"Host": host})
        _refused(response, "host_not_allowed")
        assert "PROMPTBANK_ALLOWED_HOSTS" in response.json()["error"]["message"]
    _refused(client.get("/ui", headers={"Host": "evil.example"}), "host_not_allowed")  # the dashboard too


def test_a_rebound_name_cannot_upload_a_dataset(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    _refused(_upload(client, Host="evil.example:8000"), "host_not_allowed")
    assert client.get("/v1/datasets").json() == []


def test_allowed_hosts_extend_the_loopback_names(client_with: Callable[..., TestClient]) -> None:
    client = client_with(allowed_hosts=["promptbank.internal", "[fd00::1]"])
    assert client.get("/v1/tasks", headers={"Host": "promptbank.internal:8000"}).status_code == 200
    assert client.get("/v1/tasks", headers={"Host": "[fd00::1]:8000"}).status_code == 200
    assert client.get("/v1/tasks", headers={"Host": "localhost"}).status_code == 200
    _refused(client.get("/v1/tasks", headers={"Host": "evil.example"}), "host_not_allowed")


def test_another_sites_page_cannot_change_anything(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    for origin in ["https://evil.example", "null", "http://localhost:3000", "https://localhost", "http://127.0.0.1"]:
        _refused(_upload(client, Origin=origin), "cross_origin_refused")
        _refused(
            client.post("/v1/tasks", json={"name": "t", "kind": "generation"}, headers={"Origin": origin}),
            "cross_origin_refused",
        )
    _refused(_upload(client, **{"Sec-Fetch-Site": "cross-site"}), "cross_origin_refused")
    assert client.get("/v1/datasets").json() == []  # nothing was stored
    assert client.get("/v1/tasks").json() == []
    # reading is answered (without CORS headers a browser keeps the answer from the page); deleting is not
    assert client.get("/v1/tasks", headers={"Origin": "https://evil.example"}).status_code == 200
    assert client.post("/v1/tasks", json={"name": "t", "kind": "generation"}).status_code == 201
    _refused(client.delete("/v1/tasks/t", headers={"Origin": "https://evil.example"}), "cross_origin_refused")
    assert [t["name"] for t in client.get("/v1/tasks").json()] == ["t"]


def test_the_dashboard_and_scripts_keep_working(client_with: Callable[..., TestClient]) -> None:
    client = client_with()  # base URL http://localhost
    assert _upload(client).status_code == 201  # the command line and scripts send no Origin
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}  # the dashboard at /ui
    assert _upload(client, **same).status_code == 201
    port = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}
    assert client.post("/v1/tasks", json={"name": "t", "kind": "generation"}, headers=port).status_code == 201
    ipv6 = {"Host": "[::1]:8000", "Origin": "http://[::1]:8000"}
    assert client.delete("/v1/tasks/t", headers=ipv6).status_code == 204


def test_configured_cors_origins_may_write(client_with: Callable[..., TestClient]) -> None:
    client = client_with(cors_origins=["https://app.example"])
    assert _upload(client, Origin="https://app.example").status_code == 201
    _refused(_upload(client, Origin="https://evil.example"), "cross_origin_refused")


def test_openai_routes_refuse_in_openai_shape(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    response = client.post(
        "/v1/completions", json={"model": "t", "prompt": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cross_origin_refused"
    assert response.json()["error"]["type"] == "permission_error"


def test_remote_clients_of_an_unauthenticated_service_need_an_allowed_host(
    client_with: Callable[..., TestClient],
) -> None:
    client = client_with(allow_unauthenticated=True, allowed_hosts=["gpu-box.lan"])
    remote = as_key(client, None, host="10.0.0.7")
    _refused(remote.get("/v1/tasks", headers={"Host": "10.0.0.5:8000"}), "host_not_allowed")
    assert remote.get("/v1/tasks", headers={"Host": "gpu-box.lan:8000"}).status_code == 200
    _refused(_upload(remote, Host="gpu-box.lan:8000", Origin="https://evil.example"), "cross_origin_refused")


def test_with_keys_on_neither_check_applies(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_key=ADMIN_KEY)  # a browser holds no key: a page cannot use the service
    admin = as_key(client, ADMIN_KEY)
    assert admin.get("/v1/tasks", headers={"Host": "promptbank.example.com"}).status_code == 200
    assert _upload(admin, Origin="https://app.example", Host="promptbank.example.com").status_code == 201
    missing = as_key(client, None).get("/v1/tasks", headers={"Host": "evil.example"})
    assert missing.status_code == 401  # no key: the usual answer, whatever the Host


def _raw(app: Any, method: str, headers: list[tuple[bytes, bytes]]) -> int:
    """The status of a request made straight through ASGI, with exactly these headers."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": method,
        "scheme": "http",
        "path": "/v1/tasks",
        "raw_path": b"/v1/tasks",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_a_request_without_host_is_no_pages_but_matches_no_origin(client_with: Callable[..., TestClient]) -> None:
    client = client_with()  # HTTP/1.0 may omit Host; a browser never does
    assert _raw(client.app, "GET", []) == 200
    assert _raw(client.app, "DELETE", [(b"origin", b"http://127.0.0.1:8000")]) == 403


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_real_server_refuses_a_forged_host_and_origin(live_server_with: Callable[..., str]) -> None:
    url = live_server_with(admin_key=None)  # single-user mode on 127.0.0.1
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/tasks").status_code == 200
        _refused(client.get("/v1/tasks", headers={"Host": "evil.example"}), "host_not_allowed")
        _refused(_upload(client, Origin="https://evil.example"), "cross_origin_refused")
        assert _upload(client, Origin=url).status_code == 201
        assert [d["name"] for d in client.get("/v1/datasets").json()] == ["toy"]

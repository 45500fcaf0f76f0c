from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from fastapi.testclient import TestClient


def test_jsonl_upload_is_stored_with_labels(client: TestClient) -> None:
    lines = [json.dumps({"input": f"text {i}", "output": "yes" if i % 2 else "no"}) for i in range(5)]
    response = client.post("/v1/datasets", files={"file": ("train.jsonl", "\n".join(lines).encode())})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_examples"] == 5 and sorted(body["labels"]) == ["no", "yes"] and body["name"] == "train.jsonl"
    detail = client.get(f"/v1/datasets/{body['id']}").json()
    assert detail["preview"][0] == {"input": "text 0", "output": "no"}


def test_csv_upload_with_quoted_commas(client: TestClient) -> None:
    data = 'input,output\n"hello, world",greeting\nbye,farewell\n'
    response = client.post("/v1/datasets", files={"file": ("d.csv", data.encode())}, data={"name": "csv-set"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "csv-set" and response.json()["num_examples"] == 2


def test_malformed_jsonl_names_the_lines_and_stores_nothing(client: TestClient) -> None:
    data = b'{"input": "a", "output": "b"}\nnot json\n{"input": "c"}\n'
    response = client.post("/v1/datasets", files={"file": ("bad.jsonl", data)})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "dataset_invalid"
    assert [d["line"] for d in error["details"]] == [2, 3]
    assert "line 2" in error["message"]
    assert client.get("/v1/datasets").json() == []


def test_json_body_errors_name_the_example(client: TestClient) -> None:
    body = {"name": "x", "examples": [{"input": "a", "output": "b"}, {"input": "a", "output": "b", "extra": 1}]}
    response = client.post("/v1/datasets", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["example"] == 2


def test_empty_dataset_is_refused(client: TestClient) -> None:
    response = client.post("/v1/datasets", json={"name": "x", "examples": []})
    assert response.status_code == 422 and response.json()["error"]["code"] == "dataset_empty"
    response = client.post("/v1/datasets", files={"file": ("e.jsonl", b"\n\n")})
    assert response.status_code == 422 and response.json()["error"]["code"] == "dataset_empty"


def test_non_json_body_is_422_not_500(client: TestClient) -> None:
    for path in ("/v1/datasets", "/v1/tasks", "/v1/jobs", "/v1/infer"):
        response = client.post(path, content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_json"


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/datasets", content=b"input,output", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_oversized_upload_is_413(client_with: Callable[..., TestClient]) -> None:
    client = client_with(max_upload_bytes=1000)
    big = b'{"input": "' + b"x" * 2000 + b'", "output": "y"}\n'
    response = client.post("/v1/datasets", files={"file": ("big.jsonl", big)})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    examples = [{"input": "x" * 500, "output": "y"}] * 4
    response = client.post("/v1/datasets", json={"name": "big", "examples": examples})
    assert response.status_code == 413
    assert client.get("/v1/datasets").json() == []


def test_deleted_dataset_is_gone(client: TestClient) -> None:
    dataset = client.post("/v1/datasets", json={"name": "x", "examples": [{"input": "a", "output": "b"}]}).json()
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    response = client.get(f"/v1/datasets/{dataset['id']}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"


def test_inputs_without_outputs_make_an_unlabeled_dataset_in_every_format(client: TestClient) -> None:
    uploads = [
        ("inputs.csv", b'input\nfirst text\n"second, with a comma"\n'),
        ("inputs.jsonl", b'{"input": "first text"}\n{"input": "second, with a comma"}\n'),
    ]
    for name, data in uploads:
        response = client.post("/v1/datasets", files={"file": (name, data)})
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["labeled"] is False and dataset["labels"] == [] and dataset["num_examples"] == 2
        detail = client.get(f"/v1/datasets/{dataset['id']}").json()
        assert detail["preview"] == [{"input": "first text"}, {"input": "second, with a comma"}]
    labeled = client.post("/v1/datasets", json={"name": "l", "examples": [{"input": "a", "output": "b"}]}).json()
    assert labeled["labeled"] is True


def _send_chunked(app: Any, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict[str, Any], int]:
    """Call the ASGI app with a body that arrives in chunks, without a Content-Length: (status, JSON body, chunks
    the app read)."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        more = read < len(chunks)
        return {"type": "http.request", "body": chunks[read - 1] if read <= len(chunks) else b"", "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def test_every_body_is_bounded_as_it_streams_in(client_with: Callable[..., TestClient]) -> None:
    client = client_with(max_upload_bytes=10_000, max_body_bytes=2_000)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'
    chunks = [head] + [b'{"input": "' + b"x" * 1000 + b'", "output": "y"}\n'] * 1000
    headers = {"content-type": "multipart/form-data; boundary=b"}
    status, body, read = _send_chunked(client.app, "/v1/datasets", headers, chunks)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert "PROMPTBANK_MAX_UPLOAD_BYTES" in body["error"]["message"]
    assert read < 20  # it stopped reading at the limit: 10 KB of a 1 MB body
    for path, request in (
        ("/v1/tasks", {"name": "t", "kind": "generation", "template": "x" * 3000 + " {input}"}),
        ("/v1/infer", {"task": "t", "inputs": ["x" * 3000]}),
        ("/v1/jobs", {"task": "t", "dataset_id": 1, "hyperparameters": {"init_text": "x" * 3000}}),
    ):
        response = client.post(path, json=request)  # with a Content-Length: refused before reading
        assert response.status_code == 413, (path, response.text)
        assert "PROMPTBANK_MAX_BODY_BYTES" in response.json()["error"]["message"]
        data = json.dumps(request).encode()
        status, body, _ = _send_chunked(
            client.app, path, {"content-type": "application/json"}, [data[:1500], data[1500:]]
        )
        assert status == 413 and "PROMPTBANK_MAX_BODY_BYTES" in body["error"]["message"], (path, body)
    assert client.get("/v1/datasets").json() == [] and client.get("/v1/tasks").json() == []

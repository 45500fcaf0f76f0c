"""OpenAI's error shape, which the OpenAI-compatible routes answer in (its clients parse it)."""

from __future__ import annotations

from typing import Any

OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models"})
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
OPENAI_CODES = {"task_not_found": "model_not_found"}


def is_openai_path(path: str) -> bool:
    path = path.rstrip("/")
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def openai_error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """{"error": {"message", "type", "param", "code"}}, as OpenAI's API and clients have it."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": OPENAI_CODES.get(code, code)}}

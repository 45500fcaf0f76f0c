"""One error base class carrying a status code and a stable machine-readable code; one handler renders it."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error a client can act on: rendered as {"error": {"code", "message", "details"?}}."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = headers


class Unauthorized(AppError):
    """No key, or a key that is unknown or revoked."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """A valid key without the scope the endpoint needs."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(AppError):
    """A rate limit or quota: retry after `retry_after` seconds (or after freeing what the quota counts)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class InvalidInput(AppError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "unavailable"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"

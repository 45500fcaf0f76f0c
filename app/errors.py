"""One error base class carrying a status code and a stable machine-readable code; one handler renders it."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error a client can act on: rendered as {"error": {"code", "message", "details"?}}."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


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

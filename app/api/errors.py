"""Render every error as {"error": {"code", "message", "details"?}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from app.api.body_limits import UPLOAD_PATH
from app.api.openai_errors import is_openai_path, openai_error_body
from app.errors import AppError
from app.logs import request_id

log = logging.getLogger(__name__)

UNPARSABLE_BODY = "There was an error parsing the body"
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Any = None,
    *,
    path: str | None = None,
) -> JSONResponse:
    """The error body for a request to `path`: promptbank's shape, or OpenAI's on its compatible routes."""
    if path is not None and is_openai_path(path):
        first = details[0] if isinstance(details, list) and details and code == "validation_error" else {}
        param = first.get("field") if isinstance(first, dict) else None
        return JSONResponse(openai_error_body(status, code, message, param), status_code=status, headers=headers)
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _validation_response(exc: RequestValidationError, path: str) -> JSONResponse:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(422, "invalid_json", "the request body is not valid JSON; send a JSON object", path=path)
    details = [{"field": _where(tuple(err.get("loc", ()))), "message": err.get("msg", "")} for err in errors]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
    return error_response(422, "validation_error", message, details, path=path)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        headers = exc.headers or ({"Retry-After": "5"} if exc.status_code == 503 else None)
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == UNPARSABLE_BODY:
            # The framework's words for a JSON body the parser gave up on (nested too deeply, a number too long
            # to read): like any other body that is not JSON it is a 422 invalid_json.
            return error_response(
                422,
                "invalid_json",
                "the request body could not be read as JSON (nested too deeply, or a number too long); send a "
                "JSON object",
                path=_request.url.path,
            )
        code = HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 413 and MAX_BODY_SIZE_SCOPE_KEY in _request.scope:
            limit = _request.scope[MAX_BODY_SIZE_SCOPE_KEY]
            setting = (
                "PROMPTBANK_MAX_UPLOAD_BYTES"
                if _request.url.path.rstrip("/") == UPLOAD_PATH
                else ("PROMPTBANK_MAX_BODY_BYTES")
            )
            return error_response(
                413, code, f"the request body is over the limit of {limit} bytes ({setting})", path=_request.url.path
            )
        return error_response(exc.status_code, code, str(exc.detail), path=_request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = f"an unexpected error occurred; it has been logged (request id {request_id.get()})"
        return error_response(500, "internal_error", message, path=request.url.path)

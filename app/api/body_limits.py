"""Every request body is bounded while it streams in: a dataset upload by max_upload_bytes, any other body by
max_body_bytes. Starlette's body-limit responder counts the bytes as they arrive (a chunked upload without a
Content-Length included) and stops at the limit; FastAPI turns that into a 413 that the error handlers render."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.openai_errors import is_openai_path, openai_error_body

UPLOAD_PATH = "/v1/datasets"


class BodyLimits:
    """ASGI middleware choosing each request's body limit by its route."""

    def __init__(self, app: ASGIApp, *, default: int, uploads: int) -> None:
        self.app, self.default, self.uploads = app, default, uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH
        limit = self.uploads if upload else self.default
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # Refused before a byte is read, in the service's error shape.
            setting = "PROMPTBANK_MAX_UPLOAD_BYTES" if upload else "PROMPTBANK_MAX_BODY_BYTES"
            message = f"the request body is {declared} bytes, over the limit of {limit} bytes ({setting})"
            if is_openai_path(scope["path"]):
                body = openai_error_body(413, "payload_too_large", message)
            else:
                body = {"error": {"code": "payload_too_large", "message": message}}
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        await RequestBodyLimitResponder(self.app, limit)(scope, receive, send)

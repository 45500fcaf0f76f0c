"""The process's logging: one JSON object per line (python-json-logger) with the time, level, logger, message, the
id of the request being handled (when there is one) and any extra fields; or plain text (PROMPTBANK_LOG_FORMAT)."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter

HANDLER_NAME = "promptbank"
request_id: ContextVar[str | None] = ContextVar("promptbank_request_id", default=None)


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """Log to stderr (or `stream`) in `fmt` ("json" or "text") at `level`; replaces the handler an earlier call
    installed, and leaves others' alone. Uvicorn's access lines are switched off: each request already writes one
    `promptbank.access` line (app/api/request_ids.py). The handler it installed."""
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # What uvicorn does with access_log=False (`promptbank serve` passes it), for a server started otherwise, e.g.
    # `uvicorn app.main:app`: a logger without handlers is one uvicorn does not even format lines for.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    return handler

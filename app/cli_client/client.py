"""The client every command of this package shares: HTTP calls and server-sent events to the running service, its
refusals as CliError, and the printing of answers (tables for people, JSON with --json)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """What the command line prints as `error: ...` before exiting 1."""


@dataclass
class Client:
    """The running service at url, called with key; answers shown as tables, or as JSON when as_json."""

    url: str
    key: str | None
    as_json: bool
    timeout: float = 300.0

    def _http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=self.timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON (or bytes) of a successful answer; CliError with the server's message otherwise."""
        try:
            with self._http() as http:
                response = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc} (set --url or PROMPTBANK_URL)") from exc
        return _answer(response)

    def stream(self, path: str) -> Any:
        """Server-sent events of path, as (event, data) pairs."""
        try:
            with self._http() as http, http.stream("GET", path, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    _answer(response)
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:
                        if "data" in event:
                            yield event.get("event", "message"), json.loads(event["data"])
                        event = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        event[name] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError as exc:
            raise CliError(f"the stream from {self.url} broke: {exc}") from exc

    def show(self, data: Any, columns: list[str] | None = None, title: str | None = None) -> None:
        """data as JSON (--json), or as a table of `columns` (a list of rows) or of fields (one object)."""
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            return
        console = Console()
        rows = data if isinstance(data, list) else [data]
        if columns is None:
            table = Table("field", "value", title=title)
            for name, value in (rows[0] if rows else {}).items():
                table.add_row(name, _cell(value))
        else:
            table = Table(*columns, title=title)
            for row in rows:
                table.add_row(*(_cell(row.get(column)) for column in columns))
        console.print(table)


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message, code = error["message"], error["code"]
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:500] or response.reason_phrase, "http_error"
            error = {}
        lines = [
            f"\n  line {d['line']}: {d['message']}"
            for d in (error.get("details") if isinstance(error.get("details"), list) else [])
            if isinstance(d, dict) and "line" in d
        ]
        raise CliError(f"{message} ({response.status_code} {code})" + "".join(lines[:50]))
    if response.status_code == 204:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.content


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def client(ctx: typer.Context) -> Client:
    """The Client the root command built from --url, --key and --json."""
    return ctx.obj  # type: ignore[no-any-return]

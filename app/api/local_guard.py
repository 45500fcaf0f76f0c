"""Single-user mode answers this machine's own clients, not a web page that happens to run on it.

With no key, the only credential is the client's address, and a browser on this machine has it too. So, while the
service runs in single-user mode (no key exists, no PROMPTBANK_ADMIN_KEY), as local servers that learned about DNS
rebinding and cross-site requests do:

- a request is answered only when its Host names this machine's loopback (localhost, *.localhost, 127.0.0.0/8,
  [::1]) or a name in PROMPTBANK_ALLOWED_HOSTS: a page that rebinds its own DNS name to 127.0.0.1 still sends that
  name as Host (403 `host_not_allowed`);
- a state-changing request (POST, PUT, PATCH, DELETE) is refused when its Origin is another site's (not the
  service's own scheme, host and port, nor one of PROMPTBANK_CORS_ORIGINS) or its Sec-Fetch-Site is `cross-site`:
  a form or a fetch of multipart data needs no preflight, so CORS alone would not stop it (403
  `cross_origin_refused`).

The dashboard (same origin) and the command line and scripts (no Origin) are not affected. Both checks also hold
with PROMPTBANK_ALLOW_UNAUTHENTICATED (remote clients then name the service by a host in PROMPTBANK_ALLOWED_HOSTS).
Once keys are on, a browser holds no ambient credential (keys travel in the Authorization header, never in
cookies), and neither check applies.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import is_loopback
from app.api.openai_errors import is_openai_path, openai_error_body
from app.config import Settings

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_name(host: str) -> bool:
    """Whether a host name (without port or brackets) always means this machine: localhost, *.localhost (RFC 6761),
    an address in 127.0.0.0/8 or ::1."""
    host = host.lower().rstrip(".")
    return host.endswith(".localhost") or is_loopback(host)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header ("[::1]:8000" -> ("::1", 8000)); None when it does not parse."""
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name, port


def _origin(scheme: str, name: str, port: int | None) -> tuple[str, str, int | None]:
    return scheme, name.rstrip("."), port if port is not None else DEFAULT_PORTS.get(scheme)


class LocalGuard:
    """ASGI middleware: in single-user mode, the Host allow-list and the refusal of cross-site writes."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.allowed_hosts = frozenset(settings.allowed_hosts)
        self.any_host = "*" in self.allowed_hosts
        self.cors_origins = frozenset(origin.rstrip("/") for origin in settings.cors_origins)
        self.any_origin = "*" in self.cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or await self._auth_is_on(scope):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message = refusal
        if is_openai_path(scope["path"]):
            body = openai_error_body(403, code, message)
        else:
            body = {"error": {"code": code, "message": message}}
        await JSONResponse(body, status_code=403)(scope, receive, send)  # the body is never read

    async def _auth_is_on(self, scope: Scope) -> bool:
        state = scope["app"].state
        known = state.auth.known()
        if known is not None:
            return bool(known)
        # at most once a second while in single-user mode: a key created elsewhere ends it
        return bool(await anyio.to_thread.run_sync(state.auth.auth_required, state.read_session_factory))

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[str, str] | None:
        """(code, message) when the request must be refused, else None."""
        host = headers.get("host", "")
        # A browser always sends Host (HTTP/1.1 requires it); a request without one (HTTP/1.0, a raw ASGI call) is
        # no page's and names no host to rebind. It is never the same origin as any Origin, though.
        parsed = _split_host(host) if host else None
        if host and (
            parsed is None or not (self.any_host or is_loopback_name(parsed[0]) or parsed[0] in self.allowed_hosts)
        ):
            return (
                "host_not_allowed",
                f"this service runs in single-user mode (no keys) and answers only requests addressed to "
                f"localhost, 127.0.0.1 or [::1], not to Host {host!r}; add the name to PROMPTBANK_ALLOWED_HOSTS, "
                "or turn keys on (PROMPTBANK_ADMIN_KEY or `promptbank keys create --admin`)",
            )
        if scope["method"] not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, scope["scheme"], parsed):
            return (
                "cross_origin_refused",
                f"this service runs in single-user mode (no keys) and refuses changes sent by another site's page "
                f"(Origin {origin!r}); list that origin in PROMPTBANK_CORS_ORIGINS if it is yours, or turn keys on",
            )
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return (
                "cross_origin_refused",
                "this service runs in single-user mode (no keys) and refuses changes sent by another site's page "
                "(Sec-Fetch-Site: cross-site); turn keys on to call it from other sites",
            )
        return None

    def _origin_allowed(self, origin: str, scheme: str, host: tuple[str, int | None] | None) -> bool:
        if self.any_origin or origin.rstrip("/") in self.cors_origins:
            return True
        if host is None:
            return False
        try:
            parts = urlsplit(origin)
            theirs = _origin(parts.scheme.lower(), parts.hostname or "", parts.port)
        except ValueError:  # "null" (a sandboxed or file: page) and malformed origins are nobody's
            return False
        return bool(parts.hostname) and theirs == _origin(scheme, *host)

"""Who is calling: a bearer key (or PROMPTBANK_ADMIN_KEY), or, while no key exists, the local single user.

Every request's principal decides its tenant (the sessions of the request are scoped to it), its scopes (each
route names the one it needs), its limits, and whether it is the operator (keys and audit log of every tenant).
Auth is on as soon as PROMPTBANK_ADMIN_KEY is set or any key was ever created; before that the service runs in
single-user mode, answering only clients on this machine (unless PROMPTBANK_ALLOW_UNAUTHENTICATED is set), through
a loopback or allowed Host and never for another site's page (app/api/local_guard.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.api.failed_keys import FailedKeys
from app.config import Settings
from app.db.models import DEFAULT_TENANT
from app.errors import Forbidden, Unauthorized
from app.services import keys
from app.services.keys import SCOPES, Limits
from app.services.rate_limits import RateLimiter
from app.services.shared_limits import SharedLimits

ALL_SCOPES = frozenset(SCOPES)


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    actor: str  # what the audit log records: "key 12", "admin key", "local user"
    key_id: int | None = None
    limits: Limits = field(default_factory=Limits.unlimited)
    operator: bool = False  # manages keys and reads the audit log of every tenant, not only its own

    @property
    def within(self) -> str | None:
        """The only tenant whose keys and audit log this caller manages (None: every tenant, the operator)."""
        return None if self.operator else self.tenant


class AuthState:
    """Per-process: whether auth is on (once on, it stays on), the rate limiter and the failed-key throttle (their
    counts in Redis when `shared` is given)."""

    RECHECK_SECONDS = 1.0  # a key created by another process (the CLI, another replica) counts within this

    def __init__(self, settings: Settings, shared: SharedLimits | None = None) -> None:
        self.required = settings.admin_key is not None
        self.rate_limiter = RateLimiter(shared)
        self.failed_keys = FailedKeys(settings.failed_key_limit, settings.failed_key_window_seconds, shared=shared)
        self._checked = -self.RECHECK_SECONDS

    def known(self) -> bool | None:
        """Whether auth is on, when that needs no database read (else None: call auth_required on a thread)."""
        if self.required or time.monotonic() - self._checked < self.RECHECK_SECONDS:
            return self.required
        return None

    def auth_required(self, read_sessions: Callable[[], AbstractContextManager[Session]]) -> bool:
        """Whether auth is on: the admin key is set or a key exists (read at most once a second while off)."""
        if self.known() is None:
            with read_sessions() as session:
                self.required = keys.any_created(session)
            self._checked = time.monotonic()
        return self.required


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local(request: Request) -> bool:
    host = request.client.host if request.client else None
    # no address (a unix socket) is local; "testclient" is the in-process test transport
    return host is None or host == "testclient" or is_loopback(host)


def _limits(settings: Settings, overrides: dict[str, object]) -> Limits:
    def pick(name: str, default: float) -> float:
        value = overrides.get(name)
        return float(value) if isinstance(value, int | float) else default

    return Limits(
        requests_per_second=pick("requests_per_second", settings.key_requests_per_second),
        active_jobs=int(pick("active_jobs", settings.key_active_jobs)),
        stored_bytes=int(pick("stored_bytes", settings.key_stored_bytes)),
        dataset_bytes=int(pick("dataset_bytes", settings.key_dataset_bytes)),
    )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized('send the key as "Authorization: Bearer <key>"', code="invalid_authorization")
    return token.strip()


def identify(request: Request) -> Principal | None:
    """The caller, or None when auth is on and no key was sent; Unauthorized for a key that is not valid,
    TooManyRequests for any key from an address that sent too many invalid ones."""
    state: AuthState = request.app.state.auth
    settings: Settings = request.app.state.settings
    if not state.auth_required(request.app.state.read_session_factory):
        # Single-user mode ignores any key sent, as vLLM without --api-key and Ollama do: OpenAI's client always
        # sends one (api_key="EMPTY"). It grants nothing a request without a key would not get.
        return _single_user(request, settings)
    token = _bearer(request)
    if token is None:
        return None
    address = request.client.host if request.client else "unix socket"
    state.failed_keys.check(address)
    admin = settings.admin_key
    if admin is not None and hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        return Principal(DEFAULT_TENANT, ALL_SCOPES, "admin key", operator=True)
    with request.app.state.read_session_factory() as session:
        found = keys.authenticate(session, token)
    if found is None:
        state.failed_keys.failed(address)
        raise Unauthorized("this key is unknown or was revoked; ask an admin for a key", code="invalid_key")
    limits = _limits(settings, found.limits)
    state.rate_limiter.take(found.id, limits.requests_per_second)
    return Principal(found.tenant, found.scopes, f"key {found.id}", found.id, limits, found.operator)


def _single_user(request: Request, settings: Settings) -> Principal:
    """The local user: the operator, with every scope, in the tenant "default"."""
    if not settings.allow_unauthenticated and not is_local(request):
        raise Unauthorized(
            "this service runs in single-user mode (no keys yet) and answers only clients on its own machine; set "
            "PROMPTBANK_ADMIN_KEY (or run `promptbank keys create --admin`) and send Authorization: Bearer <key>",
            code="auth_required",
        )
    return Principal(DEFAULT_TENANT, ALL_SCOPES, "local user", operator=True)


def get_principal(request: Request) -> Principal:
    """The caller; 401 when auth is on and no valid key was sent."""
    principal = identify(request)
    if principal is None:
        raise Unauthorized('this service needs a key: send "Authorization: Bearer <key>"', code="auth_required")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def requires(scope: str) -> Callable[[Principal], Principal]:
    """A dependency that lets through only callers whose key has `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(
                f'this key lacks the "{scope}" scope this endpoint needs; its scopes: '
                f"{', '.join(sorted(principal.scopes))}",
                code="missing_scope",
            )
        return principal

    # read by the test that every route names a scope
    check.scope = scope  # type: ignore[attr-defined]
    return check


need_read, need_infer, need_train, need_admin = (requires(scope) for scope in SCOPES)


def need_operator(principal: Annotated[Principal, Depends(need_admin)]) -> Principal:
    """Service-wide views (every tenant's tasks in /metrics, the engine's counters): the operator only."""
    if not principal.operator:
        raise Forbidden(
            "this endpoint shows the whole service, every tenant's included: it needs the operator's key "
            "(PROMPTBANK_ADMIN_KEY or one made with `promptbank keys create --admin`), not a tenant's admin key",
            code="operator_only",
        )
    return principal


need_operator.scope = "admin"  # type: ignore[attr-defined]

"""API keys: create (shown once), authenticate, list, revoke; and the limits each key carries.

Who manages keys: the operator (PROMPTBANK_ADMIN_KEY, a key made with `promptbank keys create --admin`, or the
single user) those of every tenant; a tenant's key with the admin scope only its own tenant's (`within`).

A key is 32 random bytes (URL-safe text after the prefix "pb_"); only its SHA-256 is stored. A slow password hash
(argon2) protects guessable secrets; a random 256-bit key cannot be guessed, so one SHA-256 is enough and keeps
authentication to one indexed lookup per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ApiKey
from app.db.repositories import ApiKeyRepository
from app.errors import Forbidden, InvalidInput, NotFound
from app.services import audit

SCOPES = ("read", "infer", "train", "admin")
KEY_PREFIX = "pb_"
TENANT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # also the pattern of the API's tenant fields
TENANT_PATTERN = re.compile(TENANT)


@dataclass(frozen=True)
class Limits:
    """What one key may use; 0 means no limit. Requests per second are counted per key, the rest per tenant."""

    requests_per_second: float = 0.0
    active_jobs: int = 0
    stored_bytes: int = 0
    dataset_bytes: int = 0

    @classmethod
    def unlimited(cls) -> Limits:
        return cls()


@dataclass(frozen=True)
class Authenticated:
    """A valid key, read out of its session."""

    id: int
    tenant: str
    scopes: frozenset[str]
    limits: dict[str, Any]
    operator: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.match(tenant):
        raise InvalidInput(
            "tenant must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            code="invalid_tenant",
        )
    return tenant


def check_scopes(scopes: Sequence[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"scopes must be a non-empty list of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            code="invalid_scopes",
        )
    return [scope for scope in SCOPES if scope in scopes]  # canonical order, no repeats


def create_key(
    session: Session,
    *,
    tenant: str,
    scopes: Sequence[str],
    name: str | None = None,
    limits: dict[str, Any] | None = None,
    operator: bool = False,
    within: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; (its row, the key itself: shown this once, never stored). `within`: the only tenant the
    caller may make keys for (None: any, the operator); `operator` only from the command line."""
    tenant, ordered = check_tenant(tenant), check_scopes(scopes)
    audit.visible_tenant(within, tenant, "keys")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRepository(session).add(
        ApiKey(
            tenant=tenant,
            scopes=ordered,
            key_hash=hash_key(key),
            prefix=key[:10],
            name=name,
            limits={k: v for k, v in (limits or {}).items() if v is not None} or None,
            operator=operator,
        )
    )
    detail = {"tenant": tenant, "scopes": ordered, "name": name} | ({"operator": True} if operator else {})
    audit.record(session, "create", "key", row.id, detail)
    return row, key


def authenticate(session: Session, key: str) -> Authenticated | None:
    """The key's identity, or None when it is unknown or revoked."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = ApiKeyRepository(session).by_hash(hash_key(key))
    if row is None or row.revoked_at is not None:
        return None
    return Authenticated(row.id, row.tenant, frozenset(row.scopes), dict(row.limits or {}), row.operator)


def any_created(session: Session) -> bool:
    return ApiKeyRepository(session).any_created()


def list_keys(
    session: Session, *, tenant: str | None, limit: int, offset: int, within: str | None = None
) -> Sequence[ApiKey]:
    """Keys, of one tenant or all; a tenant's admin (`within`) sees its own tenant's only."""
    tenant = audit.visible_tenant(within, tenant, "keys")
    return ApiKeyRepository(session).list(tenant=tenant, limit=limit, offset=offset)


def revoke_key(session: Session, key_id: int, *, within: str | None = None) -> ApiKey:
    """Revoke a key from the next request on (revoking twice changes nothing). A tenant's admin (`within`) revokes
    its own tenant's keys (another tenant's answer as if they did not exist), never an operator's key."""
    row = ApiKeyRepository(session).get(key_id)
    if row is None or (within is not None and row.tenant != within):
        raise NotFound(f"no key with id {key_id}; GET /v1/keys lists them", code="key_not_found")
    if within is not None and row.operator:
        raise Forbidden(
            f"key {key_id} is the operator's; only the operator's key (or `promptbank keys revoke`) revokes it",
            code="operator_key",
        )
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
        audit.record(session, "revoke", "key", row.id, {"tenant": row.tenant})
    return row

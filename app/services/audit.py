"""The audit log: deletes, activations and key changes, written in the transaction of the change itself (so an
entry exists exactly when the change does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import DEFAULT_TENANT, AuditEvent
from app.db.repositories import AuditRepository, session_tenant
from app.errors import Forbidden

ACTOR = "actor"  # the key of who acts in Session.info ("key 12", "admin key", "local user")


def act_as(session: Session, actor: str) -> Session:
    session.info[ACTOR] = actor
    return session


def record(
    session: Session, action: str, resource: str, resource_id: int | None, detail: dict[str, Any] | None = None
) -> None:
    tenant = session_tenant(session) or DEFAULT_TENANT
    AuditRepository(session).add(
        AuditEvent(
            tenant=tenant,
            actor=session.info.get(ACTOR, "system"),
            action=action,
            resource=resource,
            resource_id=resource_id,
            detail=detail or {},
        )
    )


def visible_tenant(within: str | None, tenant: str | None, what: str) -> str | None:
    """The tenant a request about keys or the audit log may see: `tenant` (None: all) for the operator
    (`within` None), its own tenant for a tenant's admin, which naming another tenant is refused."""
    if within is None:
        return tenant
    if tenant is not None and tenant != within:
        raise Forbidden(
            f"this key manages the {what} of the tenant {within!r} only; other tenants' need the operator's key "
            "(PROMPTBANK_ADMIN_KEY or one made with `promptbank keys create --admin`)",
            code="other_tenant",
        )
    return within


def list_events(
    session: Session, *, tenant: str | None, after_id: int, limit: int, within: str | None = None
) -> Sequence[AuditEvent]:
    """Entries of one tenant or all (the operator); a tenant's admin (`within`) reads its own tenant's only."""
    tenant = visible_tenant(within, tenant, "audit log")
    return AuditRepository(session).list(tenant=tenant, after_id=after_id, limit=limit)

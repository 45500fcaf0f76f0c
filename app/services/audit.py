"""The audit log: deletes, activations and key changes, written in the transaction of the change itself (so an
entry exists exactly when the change does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import DEFAULT_TENANT, AuditEvent
from app.db.repositories import AuditRepository, session_tenant

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


def list_events(session: Session, *, tenant: str | None, after_id: int, limit: int) -> Sequence[AuditEvent]:
    return AuditRepository(session).list(tenant=tenant, after_id=after_id, limit=limit)

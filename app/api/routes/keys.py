"""API keys (create, list, revoke) and the audit log: the admin scope's endpoints. The operator's key manages
every tenant's; a tenant's admin key only its own tenant's (403 `other_tenant` for another one)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import ADMIN, AUTH_RESPONSES, AdminDep, IdPath, LimitDep, OffsetDep, ReadSessionDep, SessionDep
from app.api.key_schemas import AuditEventOut, KeyCreate, KeyCreated, KeyOut
from app.api.schemas import ErrorResponse
from app.db.base import MAX_ID
from app.services import audit, keys
from app.services.keys import TENANT

router = APIRouter(prefix="/v1", tags=["keys"], responses=AUTH_RESPONSES, dependencies=[ADMIN])


@router.post("/keys", status_code=status.HTTP_201_CREATED, responses={422: {"model": ErrorResponse}})
def create_key(body: KeyCreate, session: SessionDep, request: Request, principal: AdminDep) -> KeyCreated:
    """Create a key for a tenant (a tenant's admin: its own) with scopes; the key is in this response only."""
    limits = body.limits.model_dump(exclude_none=True) if body.limits else None
    row, key = keys.create_key(
        session, tenant=body.tenant, scopes=body.scopes, name=body.name, limits=limits, within=principal.within
    )
    session.commit()  # before this process stops answering without a key
    request.app.state.auth.required = True  # the first key ends single-user mode from the next request on
    return KeyCreated(id=row.id, key=key, tenant=row.tenant, scopes=row.scopes, name=row.name, limits=row.limits)


@router.get("/keys")
def list_keys(
    session: ReadSessionDep,
    principal: AdminDep,
    limit: LimitDep,
    offset: OffsetDep,
    tenant: str | None = Query(None, max_length=64, pattern=TENANT, description="Only this tenant's keys."),
) -> list[KeyOut]:
    """Every key (a tenant's admin: its tenant's), revoked ones included; never the key itself, its prefix."""
    found = keys.list_keys(session, tenant=tenant, limit=limit, offset=offset, within=principal.within)
    return [KeyOut.model_validate(k) for k in found]


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": ErrorResponse}})
def revoke_key(key_id: IdPath, session: SessionDep, principal: AdminDep) -> Response:
    """Revoke a key (a tenant's admin: of its tenant, not the operator's): from the next request on it answers 401."""
    keys.revoke_key(session, key_id, within=principal.within)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/audit")
def list_audit_events(
    session: ReadSessionDep,
    principal: AdminDep,
    limit: LimitDep,
    after: int = Query(0, ge=0, le=MAX_ID, description="Only entries with an id above this (for polling)."),
    tenant: str | None = Query(None, max_length=64, pattern=TENANT, description="Only this tenant's entries."),
) -> list[AuditEventOut]:
    """The audit log (a tenant's admin: its tenant's), oldest first: deletes, activations, cancellations and key
    changes, with who did them."""
    events = audit.list_events(session, tenant=tenant, after_id=after, limit=limit, within=principal.within)
    return [AuditEventOut.model_validate(e) for e in events]

"""API keys (create, list, revoke) and the audit log: the admin scope's endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import ADMIN, AUTH_RESPONSES, IdPath, LimitDep, OffsetDep, ReadSessionDep, SessionDep
from app.api.key_schemas import AuditEventOut, KeyCreate, KeyCreated, KeyOut
from app.api.schemas import ErrorResponse
from app.db.base import MAX_ID
from app.services import audit, keys
from app.services.keys import TENANT

router = APIRouter(prefix="/v1", tags=["keys"], responses=AUTH_RESPONSES, dependencies=[ADMIN])


@router.post("/keys", status_code=status.HTTP_201_CREATED, responses={422: {"model": ErrorResponse}})
def create_key(body: KeyCreate, session: SessionDep, request: Request) -> KeyCreated:
    """Create a key for a tenant with scopes; the key is in this response only."""
    limits = body.limits.model_dump(exclude_none=True) if body.limits else None
    row, key = keys.create_key(session, tenant=body.tenant, scopes=body.scopes, name=body.name, limits=limits)
    session.commit()  # before this process stops answering without a key
    request.app.state.auth.required = True  # the first key ends single-user mode from the next request on
    return KeyCreated(id=row.id, key=key, tenant=row.tenant, scopes=row.scopes, name=row.name, limits=row.limits)


@router.get("/keys")
def list_keys(
    session: ReadSessionDep,
    limit: LimitDep,
    offset: OffsetDep,
    tenant: str | None = Query(None, max_length=64, pattern=TENANT, description="Only this tenant's keys."),
) -> list[KeyOut]:
    """Every key (never the key itself: its prefix), revoked ones included."""
    return [KeyOut.model_validate(k) for k in keys.list_keys(session, tenant=tenant, limit=limit, offset=offset)]


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": ErrorResponse}})
def revoke_key(key_id: IdPath, session: SessionDep) -> Response:
    """Revoke a key: from the next request on it answers 401."""
    keys.revoke_key(session, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/audit")
def list_audit_events(
    session: ReadSessionDep,
    limit: LimitDep,
    after: int = Query(0, ge=0, le=MAX_ID, description="Only entries with an id above this (for polling)."),
    tenant: str | None = Query(None, max_length=64, pattern=TENANT, description="Only this tenant's entries."),
) -> list[AuditEventOut]:
    """The audit log, oldest first: deletes, activations, cancellations and key changes, with who did them."""
    events = audit.list_events(session, tenant=tenant, after_id=after, limit=limit)
    return [AuditEventOut.model_validate(e) for e in events]

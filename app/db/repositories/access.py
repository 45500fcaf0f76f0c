"""Who may call the service and what they did: API keys and the audit log. Both are the operator's, service-wide
rows read across tenants whatever the session's tenant."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from app.db.models import ApiKey, AuditEvent
from app.db.repositories.tenancy import Repository


class ApiKeyRepository(Repository[ApiKey]):
    """Keys are service-wide (an admin manages every tenant's), so these queries are not scoped."""

    model = ApiKey
    scoped = False

    def get(self, key_id: int) -> ApiKey | None:
        """The key of this id."""
        return self._get(key_id)

    def by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose hash this is."""
        return self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))

    def any_created(self) -> bool:
        """Whether a key was ever created (revoked keys count: the service never falls back to single-user mode)."""
        return self.session.scalar(select(ApiKey.id).limit(1)) is not None

    def list(self, *, tenant: str | None, limit: int, offset: int) -> Sequence[ApiKey]:
        """Every key (or one tenant's), by id."""
        stmt = select(ApiKey).order_by(ApiKey.id).limit(limit).offset(offset)
        if tenant is not None:
            stmt = stmt.where(ApiKey.tenant == tenant)
        return self.session.scalars(stmt).all()


class AuditRepository(Repository[AuditEvent]):
    """The log is the operator's (admin scope): read across tenants, optionally one tenant's."""

    model = AuditEvent
    scoped = False

    def list(self, *, tenant: str | None, after_id: int, limit: int) -> Sequence[AuditEvent]:
        """Events after after_id (of every tenant, or one), oldest first."""
        stmt = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id).limit(limit)
        if tenant is not None:
            stmt = stmt.where(AuditEvent.tenant == tenant)
        return self.session.scalars(stmt).all()

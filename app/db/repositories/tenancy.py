"""A session's tenant, and the Repository every other module builds on: rows found, added and deleted only within it.

Tenants: a session scoped to a tenant (`scope_session`, done by the API for every request and by the worker for a
job's inputs) sees and creates only that tenant's rows; every repository query adds the condition itself. A session
without a tenant (the worker's queue and the maintenance paths) sees every tenant.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.db.base import Base

TENANT = "tenant"  # the key of a session's tenant in Session.info

Row = TypeVar("Row", bound=Base)
Selected = TypeVar("Selected")


def scope_session(session: Session, tenant: str | None) -> Session:
    """From now on this session's repositories read and write only `tenant`'s rows (None: every tenant's)."""
    session.info[TENANT] = tenant
    return session


def session_tenant(session: Session) -> str | None:
    """The tenant this session is scoped to; None when it sees every tenant."""
    return session.info.get(TENANT)  # type: ignore[no-any-return]


class Repository(Generic[Row]):  # noqa: UP046  (PEP 695 syntax needs Python 3.12)
    """What every repository does the same way: find a row of the session's tenant by id, add a row (flushed, so
    it has its id, and owned by the session's tenant) and delete one."""

    model: type[Row]
    scoped = True  # False: the rows are service-wide, read across tenants whatever the session's tenant

    def __init__(self, session: Session) -> None:
        self.session = session
        self.tenant = session_tenant(session) if self.scoped else None

    def _own(self, stmt: Select[Selected], model: type[Base] | None = None) -> Select[Selected]:
        """stmt restricted to the session's tenant, if it has one."""
        if self.tenant is None:
            return stmt
        return stmt.where((model or self.model).tenant == self.tenant)  # type: ignore[attr-defined]

    def _get(self, row_id: int, options: list[Any] | None = None) -> Row | None:
        # not session.get(): its identity-map shortcut would hand back another tenant's row loaded earlier
        stmt: Select[Any] = select(self.model).options(*(options or []))
        return self.session.scalar(self._own(stmt.where(self.model.id == row_id)))  # type: ignore[attr-defined]

    def add(self, row: Row) -> Row:
        """Add the row as the session tenant's (refused if it names another), flushed so it has its id."""
        if hasattr(row, TENANT):
            owner = getattr(row, TENANT)
            if self.tenant is not None:
                if owner is None:
                    setattr(row, TENANT, self.tenant)
                elif owner != self.tenant:
                    raise ValueError(f"a row of tenant {owner!r} cannot be added in tenant {self.tenant!r}")
            elif owner is None:
                raise ValueError(f"a new {type(row).__name__} needs a tenant")
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: Row) -> None:
        """Delete the row, flushed."""
        self.session.delete(row)
        self.session.flush()

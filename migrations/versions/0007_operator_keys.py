"""operator keys: a key made with `promptbank keys create --admin` manages keys and reads the audit log of every
tenant; a tenant's key with the admin scope only its own tenant's

Revision ID: 0007
Revises: 0006

Keys stored before this revision that the command line created with every scope (the audit log's "create" entry
by the actor "cli") were made by `keys create --admin` (or its equivalent) and become operator keys, so the
operator keeps the key it has; keys an admin created through the API keep their tenant's admin scope only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVERY_SCOPE = {"read", "infer", "train", "admin"}

api_keys = sa.table(
    "api_keys", sa.column("id", sa.Integer()), sa.column("scopes", sa.JSON()), sa.column("operator", sa.Boolean())
)
audit_log = sa.table(
    "audit_log",
    sa.column("actor", sa.String()),
    sa.column("action", sa.String()),
    sa.column("resource", sa.String()),
    sa.column("resource_id", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("api_keys", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("operator", sa.Boolean(), nullable=False, server_default=sa.false()))
    bind = op.get_bind()
    made_by_cli = set(
        bind.scalars(
            sa.select(audit_log.c.resource_id).where(
                audit_log.c.actor == "cli", audit_log.c.action == "create", audit_log.c.resource == "key"
            )
        ).all()
    )
    for key_id, scopes in bind.execute(sa.select(api_keys.c.id, api_keys.c.scopes)).all():
        if key_id in made_by_cli and set(scopes or []) >= EVERY_SCOPE:
            bind.execute(api_keys.update().where(api_keys.c.id == key_id).values(operator=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("operator")

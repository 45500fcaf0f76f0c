"""tenants and keys: every dataset, task, job and prompt belongs to a tenant; API keys (hashed); the audit log

Revision ID: 0005
Revises: 0004

Rows stored before this revision belong to the tenant "default" (single-user mode's, and PROMPTBANK_ADMIN_KEY's).
Task names become unique per tenant. Datasets record their stored size (the storage quota counts it); existing
datasets are measured here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("tasks", "datasets", "jobs", "prompts")

datasets = sa.table(
    "datasets", sa.column("id", sa.Integer()), sa.column("examples", sa.JSON()), sa.column("size_bytes", sa.Integer())
)


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    for table in OWNED:
        # recreate keeps SQLite's AUTOINCREMENT (revision 0004), which reflection does not carry over
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=False, server_default="default"))
            batch.create_index(op.f(f"ix_{table}_tenant"), ["tenant"], unique=False)
            if table == "tasks":
                batch.drop_constraint("uq_tasks_name", type_="unique")
                batch.create_unique_constraint("uq_tasks_tenant_name", ["tenant", "name"])
            if table == "datasets":
                batch.add_column(sa.Column("size_bytes", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    for dataset_id in bind.scalars(sa.select(datasets.c.id)).all():
        examples = bind.scalar(sa.select(datasets.c.examples).where(datasets.c.id == dataset_id))
        size = len(json.dumps(examples, ensure_ascii=False).encode())
        bind.execute(datasets.update().where(datasets.c.id == dataset_id).values(size_bytes=size))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("limits", sa.JSON(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_audit_log_tenant"), "audit_log", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_tenant"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_api_keys_tenant"), table_name="api_keys")
    op.drop_table("api_keys")
    for table in OWNED:
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            if table == "tasks":
                # names are unique again across the whole service: fails if two tenants share a task name
                batch.drop_constraint("uq_tasks_tenant_name", type_="unique")
                batch.create_unique_constraint("uq_tasks_name", ["name"])
            if table == "datasets":
                batch.drop_column("size_bytes")
            batch.drop_index(op.f(f"ix_{table}_tenant"))
            batch.drop_column("tenant")

"""ids are never reused: SQLite tables become AUTOINCREMENT

Revision ID: 0004
Revises: 0003

PostgreSQL sequences never hand out an id twice already. SQLite, without AUTOINCREMENT, gives the next row the
largest id in use plus one, so deleting the newest prompt and training again reused its id. The tables are copied
into AUTOINCREMENT tables (batch mode); from then on no id is handed out twice. Ids of rows deleted before this
upgrade that were above the largest id still present can be handed out once more: nothing recorded them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tasks", "datasets", "jobs", "job_events", "prompts")


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)

"""tasks.traffic: a task's requests split between versions by weight (canary traffic)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# ADD/DROP COLUMN in place: a batch copy of the table would drop SQLite's AUTOINCREMENT (revision 0004).
def upgrade() -> None:
    op.add_column("tasks", sa.Column("traffic", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "traffic")

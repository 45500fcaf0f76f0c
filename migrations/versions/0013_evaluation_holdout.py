"""the evaluation holdout: a task's evaluation set held out of its first training dataset (datasets.source_dataset_id,
datasets.source_rows: where a held-out set's examples came from), whether a task gets one (tasks.evaluation_holdout)
and what a job trains without (jobs.evaluation_holdout)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# ADD/DROP COLUMN in place: a batch copy of a table would drop SQLite's AUTOINCREMENT (revision 0004).
def upgrade() -> None:
    op.add_column("tasks", sa.Column("evaluation_holdout", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column("datasets", sa.Column("source_dataset_id", sa.Integer(), nullable=True))
    op.add_column("datasets", sa.Column("source_rows", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("evaluation_holdout", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "evaluation_holdout")
    op.drop_column("datasets", "source_rows")
    op.drop_column("datasets", "source_dataset_id")
    op.drop_column("tasks", "evaluation_holdout")

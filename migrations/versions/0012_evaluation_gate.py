"""the evaluation gate: a task's evaluation dataset (tasks.evaluation_dataset_id), every version's scores on it
(prompt_evaluations), and a job's promote policy (jobs.promote: always, if_better, never; null: always)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# ADD/DROP COLUMN in place: a batch copy of a table would drop SQLite's AUTOINCREMENT (revision 0004).
def upgrade() -> None:
    op.add_column("tasks", sa.Column("evaluation_dataset_id", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("promote", sa.String(length=16), nullable=True))
    op.create_table(
        "prompt_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_evaluations_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_evaluations")),
        sa.UniqueConstraint("prompt_id", "dataset_id", name="uq_prompt_evaluations_prompt_id_dataset_id"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_prompt_evaluations_prompt_id"), "prompt_evaluations", ["prompt_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_prompt_evaluations_prompt_id"), table_name="prompt_evaluations")
    op.drop_table("prompt_evaluations")
    op.drop_column("jobs", "promote")
    op.drop_column("tasks", "evaluation_dataset_id")

"""job_trials: the configurations a tune job tried, with their validation curves, values and states
(GET /v1/jobs/{id}/trials)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_trials_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_trials")),
        sa.UniqueConstraint("job_id", "attempt", "number", name="uq_job_trials_job_id_attempt_number"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_job_trials_job_id"), "job_trials", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_trials_job_id"), table_name="job_trials")
    op.drop_table("job_trials")

"""learn from learned prompts: lineage, meta-initialisations (prompts of no task), jobs of no task, unlabeled
datasets

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

prompts = sa.table(
    "prompts",
    sa.column("id", sa.Integer()),
    sa.column("task_id", sa.Integer()),
    sa.column("job_id", sa.Integer()),
    sa.column("dataset_id", sa.Integer()),
    sa.column("hyperparameters", sa.JSON()),
    sa.column("lineage", sa.JSON()),
)
events = sa.table("job_events", sa.column("job_id", sa.Integer()))
jobs = sa.table(
    "jobs", sa.column("id", sa.Integer()), sa.column("type", sa.String()), sa.column("task_id", sa.Integer())
)


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="task"))
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lineage", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("labeled", sa.Boolean(), nullable=False, server_default=sa.true()))
    # Prompts stored before lineage existed were all made by a train job (or its length search) from a dataset;
    # their lineage is what their row already says.
    bind = op.get_bind()
    types = dict(bind.execute(sa.select(jobs.c.id, jobs.c.type)).all())
    rows = bind.execute(sa.select(prompts.c.id, prompts.c.job_id, prompts.c.dataset_id, prompts.c.hyperparameters))
    for prompt_id, job_id, dataset_id, hyperparameters in rows.all():
        init = (hyperparameters or {}).get("init")
        lineage = {
            "job_type": types.get(job_id, "train"),
            "job_id": job_id,
            "dataset_id": dataset_id,
            "init_prompt_id": init.get("from_prompt") if isinstance(init, dict) else None,
        }
        bind.execute(prompts.update().where(prompts.c.id == prompt_id).values(lineage=lineage))


def downgrade() -> None:
    bind = op.get_bind()
    # Rows of no task cannot exist before this revision: meta-initialisations and their jobs go.
    bind.execute(prompts.delete().where(prompts.c.task_id.is_(None)))
    orphans = sa.select(jobs.c.id).where(jobs.c.task_id.is_(None))
    # SQLite runs migrations with foreign keys off: what a cascade would do is done here.
    bind.execute(events.delete().where(events.c.job_id.in_(orphans)))
    bind.execute(prompts.update().where(prompts.c.job_id.in_(orphans)).values(job_id=None))
    bind.execute(jobs.delete().where(jobs.c.task_id.is_(None)))
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("labeled")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("lineage")
        batch.drop_column("name")
        batch.drop_column("kind")
        batch.alter_column("task_id", existing_type=sa.Integer(), nullable=False)

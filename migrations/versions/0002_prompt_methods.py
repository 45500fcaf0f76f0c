"""prompt methods: prompts.shapes, jobs.options, tasks.ensemble; the method prompt_tuning becomes prompt

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

prompts = sa.table(
    "prompts",
    sa.column("id", sa.Integer()),
    sa.column("method", sa.String()),
    sa.column("num_virtual_tokens", sa.Integer()),
    sa.column("hidden_size", sa.Integer()),
    sa.column("shapes", sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("shapes", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("ensemble", sa.JSON(), nullable=True))
    bind = op.get_bind()
    # Prompts stored before methods existed are plain prompts of one tensor "prompt" [n, hidden]; their bytes
    # stay as they are (the artifact reader reads the old format).
    rows = bind.execute(sa.select(prompts.c.id, prompts.c.num_virtual_tokens, prompts.c.hidden_size)).all()
    for prompt_id, n, hidden in rows:
        bind.execute(prompts.update().where(prompts.c.id == prompt_id).values(shapes={"prompt": [n, hidden]}))
    bind.execute(prompts.update().where(prompts.c.method == "prompt_tuning").values(method="prompt"))


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(prompts.update().where(prompts.c.method == "prompt").values(method="prompt_tuning"))
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("ensemble")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("options")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("shapes")

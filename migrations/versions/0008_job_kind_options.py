"""a job kind's own hyperparameters live in jobs.options: a distill job's alpha, temperature, generations, top_k
and max_new_tokens under options.distillation; a meta_init job's order, inner and outer loops under options.meta.
jobs.hyperparameters keeps the method's config alone.

Revision ID: 0008
Revises: 0007

Before this revision they were stored in jobs.hyperparameters beside the method's fields. GET /v1/jobs shows the
same hyperparameters either way (the kind merges its own back for display).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fields of each kind's own hyperparameters as of this revision, and where they go in options.
OWN = {
    "distill": ("distillation", ("alpha", "temperature", "generations", "top_k", "max_new_tokens")),
    "meta_init": (
        "meta",
        ("order", "inner_steps", "inner_lr", "outer_lr", "outer_steps", "meta_batch", "support_size", "query_size"),
    ),
}

jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer()),
    sa.column("type", sa.String()),
    sa.column("hyperparameters", sa.JSON()),
    sa.column("options", sa.JSON()),
)


def _move(row: Any, key: str, fields: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    hyperparameters, options = dict(row.hyperparameters or {}), dict(row.options or {})
    own = {name: hyperparameters.pop(name) for name in fields if name in hyperparameters}
    options[key] = {**own, **options.get(key, {})}
    return hyperparameters, options


def upgrade() -> None:
    bind = op.get_bind()
    for job_type, (key, fields) in OWN.items():
        rows = bind.execute(sa.select(jobs).where(jobs.c.type == job_type)).all()
        for row in rows:
            hyperparameters, options = _move(row, key, fields)
            bind.execute(
                jobs.update().where(jobs.c.id == row.id).values(hyperparameters=hyperparameters, options=options)
            )


def downgrade() -> None:
    bind = op.get_bind()
    for job_type, (key, _) in OWN.items():
        rows = bind.execute(sa.select(jobs).where(jobs.c.type == job_type)).all()
        for row in rows:
            options = dict(row.options or {})
            own = options.pop(key, {})
            hyperparameters = {**(row.hyperparameters or {}), **own}
            bind.execute(
                jobs.update().where(jobs.c.id == row.id).values(hyperparameters=hyperparameters, options=options)
            )

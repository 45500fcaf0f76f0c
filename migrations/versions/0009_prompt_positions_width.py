"""prompts.num_virtual_tokens is prompts.positions and prompts.hidden_size is prompts.width: what they always
held (the positions a prompt adds to a row, before and after the input, 0 for input_mapping; the width of its
vectors), named apart from a method's `num_virtual_tokens` hyperparameter and the model's hidden size.

Revision ID: 0009
Revises: 0008

GET /v1/prompts answers with the same fields as before (num_virtual_tokens, hidden_size).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# ALTER TABLE ... RENAME COLUMN in place (SQLite 3.25+, PostgreSQL): a batch copy of the table would drop SQLite's
# AUTOINCREMENT, and with it the promise that a deleted prompt's id is never reused (revision 0004).
def upgrade() -> None:
    op.alter_column("prompts", "num_virtual_tokens", new_column_name="positions")
    op.alter_column("prompts", "hidden_size", new_column_name="width")


def downgrade() -> None:
    op.alter_column("prompts", "positions", new_column_name="num_virtual_tokens")
    op.alter_column("prompts", "width", new_column_name="hidden_size")

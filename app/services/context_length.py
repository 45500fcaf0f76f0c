"""The one context-length check: inference inputs and training examples both go through it."""

from __future__ import annotations

from collections.abc import Iterable

from app.db.models import Task
from app.engine.core.model import FrozenModel
from app.engine.core.text import encode_example
from app.services.tasks import task_spec


def first_overflow(
    model: FrozenModel, task: Task, rows: Iterable[tuple[str, str | None]], virtual_tokens: int, extra: int = 0
) -> tuple[int, int] | None:
    """(index, tokens needed) of the first (input, output) row past the model's context with the prompt, or None.

    virtual_tokens: the positions the prompt adds to a row (before and after the input); extra: new tokens to
    decode. Callers raise their own error from it: a request's inputs and a dataset's examples are named differently.
    """
    spec = task_spec(task)
    tokens = (len(ex.input_ids) + len(ex.target_ids) for ex in (encode_example(model, spec, t, o) for t, o in rows))
    return first_too_long(model, tokens, virtual_tokens, extra)


def first_too_long(
    model: FrozenModel, token_counts: Iterable[int], virtual_tokens: int, extra: int = 0
) -> tuple[int, int] | None:
    """(index, tokens needed) of the first row of token_counts tokens past the context with the prompt, or None."""
    for index, count in enumerate(token_counts):
        needed = virtual_tokens + count + extra
        if needed > model.max_positions:
            return index, needed
    return None

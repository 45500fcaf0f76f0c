"""What an inference request is refused for before any model work: its size, its length, its empty inputs."""

from __future__ import annotations

from app.db.models import Prompt, Task
from app.engine.core.model import FrozenModel
from app.engine.core.text import encode_example, label_token_ids
from app.engine.methods import get_method
from app.errors import InvalidInput
from app.services.context_length import first_too_long
from app.services.tasks import task_spec


def check_input_lengths(inputs: list[str], max_chars: int) -> None:
    """Refuse an input longer than max_chars characters before any tokenising (tokenising costs with length)."""
    if not max_chars:
        return
    index = next((i for i, text in enumerate(inputs) if len(text) > max_chars), None)
    if index is not None:
        raise InvalidInput(
            f"inputs[{index}] is {len(inputs[index])} characters; at most {max_chars} are accepted "
            "(PROMPTBANK_MAX_INPUT_CHARS); shorten it",
            code="input_too_long",
            details={"index": index, "characters": len(inputs[index]), "limit": max_chars},
        )


def check_work(ids: list[tuple[int, ...]], prompts: list[Prompt], reserve: int, limit: int) -> None:
    """Refuse a request whose rows would compute more positions than `limit` in all."""
    if not limit:
        return
    virtual = max(p.positions for p in prompts)
    work = sum(len(row) + virtual + reserve for row in ids) * len(prompts)
    if work > limit:
        raise InvalidInput(
            f"this request asks for {work} token positions (inputs x (prompt + input + new tokens) x ensemble "
            f"members); at most {limit} are served per request (PROMPTBANK_MAX_REQUEST_TOKENS): split it, or ask "
            "for fewer new tokens",
            code="request_too_large",
            details={"tokens": work, "limit": limit},
        )


def encode_checked(
    model: FrozenModel, task: Task, inputs: list[str], prompts: list[Prompt], reserve: int
) -> list[tuple[int, ...]]:
    """Each input's token ids (the one tokenisation of a request), refusing one past the context, or one that
    renders to nothing for a prompt that has no state of its own to predict from."""
    spec = task_spec(task)
    ids = [tuple(encode_example(model, spec, text, None).input_ids) for text in inputs]
    empty = next((index for index, row in enumerate(ids) if not row), None)
    needy = next((p for p in prompts if get_method(p.method).needs_input), None)
    if empty is not None and needy is not None:
        raise InvalidInput(
            f"inputs[{empty}] renders to no tokens with template {task.template!r}, and a {needy.method} prompt "
            "needs at least one; give some text",
            code="input_empty",
        )
    virtual_tokens = max(p.positions for p in prompts)
    # The labels as the engine scores them (text.label_token_ids: a leading space only where the template's
    # rendered prompt does not already end in whitespace), so a row accepted here fits when it is scored.
    longest_label = max((len(label) for label in label_token_ids(model, spec)), default=0)
    overflow = first_too_long(model, map(len, ids), virtual_tokens, max(reserve, longest_label))
    if overflow is not None:
        index, needed = overflow
        raise InvalidInput(
            f"inputs[{index}] needs {needed} tokens with the prompt and output, more than the model's context "
            f"of {model.max_positions}; shorten it",
            code="input_too_long",
            details={"index": index, "tokens": needed, "context": model.max_positions},
        )
    return ids

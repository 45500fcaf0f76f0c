"""The one forward: rows that each carry their own prompt, scored as the plain model scores them, with gradients."""

from __future__ import annotations

import pytest
import torch

from app.engine.core.forward import Query, forward_rows, score_targets
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments, ServedPrompt, resolve
from app.engine.core.text import TaskSpec, encode_example
from tests.engine.reference import plain_hidden, plain_label_logprob

TEXTS = ["the movie was good", "hi", "what is the capital of france? tell me now please", "a"]
OUTPUTS = ["great", "hello there", "paris", "one two three"]


def _prompts() -> list[torch.Tensor | None]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(5, 64, generator=generator),
        None,
        torch.randn(2, 64, generator=generator),
        torch.randn(11, 64, generator=generator),
    ]


def _served(frozen: FrozenModel, prompts: list[torch.Tensor | None]) -> list[ServedPrompt]:
    return resolve(frozen, [Segments(prefix=p) for p in prompts])


def test_targets_of_rows_with_mixed_prompts_score_as_the_plain_model(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompts = _prompts()
    examples = [encode_example(frozen, answer, t, o) for t, o in zip(TEXTS, OUTPUTS, strict=True)]
    # Each row scores its own output and another row's (two branches that must not see each other).
    targets = [[ex.target_ids, examples[(i + 1) % 4].target_ids] for i, ex in enumerate(examples)]
    with torch.no_grad():
        scores = score_targets(frozen, _served(frozen, prompts), [ex.input_ids for ex in examples], targets)
    for row, (prompt, example) in enumerate(zip(prompts, examples, strict=True)):
        for k, target in enumerate(targets[row]):
            expected = plain_label_logprob(frozen, prompt, example.input_ids, target)
            assert abs(float(scores[row][k]) - expected) < 1e-4


def test_last_states_equal_the_plain_model_row_by_row(frozen: FrozenModel, sentiment: TaskSpec) -> None:
    prompts = _prompts()
    ids = [encode_example(frozen, sentiment, text, None).input_ids for text in TEXTS]
    with torch.no_grad():
        result = forward_rows(frozen, _served(frozen, prompts), [Query(row) for row in ids])
        states = result.hidden[torch.arange(len(ids)), result.last]
    for row, (prompt, row_ids) in enumerate(zip(prompts, ids, strict=True)):
        assert (states[row] - plain_hidden(frozen, prompt, row_ids)[-1]).abs().max() < 1e-4


def test_loss_gradient_reaches_the_prompt_and_nothing_else(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompt = torch.randn(4, 64, requires_grad=True)
    examples = [encode_example(frozen, answer, t, o) for t, o in zip(TEXTS, OUTPUTS, strict=True)]
    served = resolve(frozen, [Segments(prefix=prompt)])[0]
    plain = resolve(frozen, [Segments()])[0]
    totals = score_targets(
        frozen, [served, plain, served, served], [ex.input_ids for ex in examples], [[ex.target_ids] for ex in examples]
    )
    (-torch.cat(totals).sum()).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in frozen.model.parameters())


def test_a_row_with_nothing_to_read_and_an_empty_target_are_refused(frozen: FrozenModel) -> None:
    nothing = resolve(frozen, [Segments()])[0]
    with pytest.raises(ValueError, match="no input tokens"):
        forward_rows(frozen, [nothing], [Query([])])
    with pytest.raises(ValueError, match="empty target"):
        score_targets(frozen, [nothing], [[5, 6]], [[[]]])

"""Batches of rows that each carry their own prompt: padding, positions, targets, gradients."""

from __future__ import annotations

import pytest
import torch

from app.engine.forward import build_batch, hidden_states, lm_loss, target_logprobs
from app.engine.model import FrozenModel
from app.engine.text import EncodedExample, TaskSpec, encode_example

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


def test_mixed_prompt_lengths_match_rows_run_alone(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompts = _prompts()
    examples = [encode_example(frozen, answer, t, o) for t, o in zip(TEXTS, OUTPUTS, strict=True)]
    together = hidden_states(frozen, build_batch(frozen, prompts, examples))
    scores = target_logprobs(frozen, prompts, examples)
    for row, (prompt, example) in enumerate(zip(prompts, examples, strict=True)):
        alone = hidden_states(frozen, build_batch(frozen, [prompt], [example]))[0]
        # Left padding: the row's real positions are the last ones of the batch.
        assert (together[row, -alone.shape[0] :] - alone).abs().max() < 1e-4
        assert abs(scores[row] - target_logprobs(frozen, [prompt], [example])[0]) < 1e-4


def test_target_mask_marks_the_positions_before_each_target_token(frozen: FrozenModel) -> None:
    examples = [EncodedExample([5, 6, 7], [8, 9]), EncodedExample([5], [])]
    batch = build_batch(frozen, [torch.zeros(2, 64), None], examples)
    assert batch.inputs_embeds.shape == (2, 7, 64)
    assert batch.attention_mask.tolist() == [[1] * 7, [0] * 6 + [1]]
    assert batch.position_ids.tolist() == [list(range(7)), [0] * 7]
    assert batch.target_mask[0].tolist() == [False, False, False, False, True, True, False]
    assert batch.target_ids[0][batch.target_mask[0]].tolist() == [8, 9]
    assert not batch.target_mask[1].any()


def test_head_only_on_target_positions_equals_the_full_model(frozen: FrozenModel, sentiment: TaskSpec) -> None:
    prompts = _prompts()[:2]
    examples = [encode_example(frozen, sentiment, t, "positive") for t in TEXTS[:2]]
    batch = build_batch(frozen, prompts, examples)
    full = frozen.model(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).logits
    logprobs = torch.log_softmax(full, dim=-1)
    expected = torch.zeros(2)
    for row, position in batch.target_mask.nonzero().tolist():
        expected[row] += logprobs[row, position, batch.target_ids[row, position]]
    assert torch.allclose(target_logprobs(frozen, prompts, examples), expected, atol=1e-4)


def test_loss_gradient_reaches_the_prompt_and_nothing_else(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompt = torch.randn(4, 64, requires_grad=True)
    examples = [encode_example(frozen, answer, t, o) for t, o in zip(TEXTS, OUTPUTS, strict=True)]
    loss = lm_loss(frozen, [prompt, None, prompt, prompt], examples)
    loss.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in frozen.model.parameters())


def test_rows_longer_than_the_context_are_refused(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match="context holds 256"):
        build_batch(frozen, [torch.zeros(200, 64)], [EncodedExample([1] * 50, [2] * 10)])
    with pytest.raises(ValueError, match="no target tokens"):
        lm_loss(frozen, [None], [EncodedExample([1, 2], [])])
    with pytest.raises(ValueError, match="before it"):
        build_batch(frozen, [None], [EncodedExample([], [3])])

"""Serving one prompt over many inputs: label probabilities and greedy generation."""

from __future__ import annotations

import pytest
import torch

from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify, generate
from app.engine.core.text import TaskSpec, label_token_ids
from tests.engine.reference import greedy_without_cache

INPUTS = ["the movie was good", "bad", "what is the capital of france? tell me now", "they hate that place"]


def _prompt(length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, 64, generator=torch.Generator().manual_seed(seed))


def test_single_token_labels_take_the_fast_path_and_agree_with_full_scoring(
    frozen: FrozenModel, sentiment: TaskSpec
) -> None:
    assert all(len(ids) == 1 for ids in label_token_ids(frozen, sentiment))
    fast = classify(frozen, _prompt(), sentiment, INPUTS, batch_size=3)
    # A three-label task whose extra label is multi-token goes through pairwise scoring; renormalising
    # its probabilities over the first two labels must give the fast path's answer.
    wide = TaskSpec("classification", sentiment.template, ("positive", "negative", "neutral"))
    assert len(label_token_ids(frozen, wide)[2]) > 1
    slow = classify(frozen, _prompt(), wide, INPUTS, batch_size=5)
    for quick, full in zip(fast, slow, strict=True):
        assert list(quick) == ["positive", "negative"]
        assert abs(sum(quick.values()) - 1) < 1e-5
        pair = full["positive"] + full["negative"]
        assert abs(quick["positive"] - full["positive"] / pair) < 1e-4


def test_multi_token_labels_scored(frozen: FrozenModel) -> None:
    spec = TaskSpec("classification", "Input: {input}\nLabel:", ("extraordinary", "neutral nice"))
    assert all(len(ids) > 1 for ids in label_token_ids(frozen, spec))
    batched = classify(frozen, _prompt(), spec, INPUTS, batch_size=3)
    for text, probabilities in zip(INPUTS, batched, strict=True):
        assert list(probabilities) == ["extraordinary", "neutral nice"]
        assert abs(sum(probabilities.values()) - 1) < 1e-5
        assert classify(frozen, _prompt(), spec, [text])[0] == pytest.approx(probabilities, abs=1e-4)


def test_classification_without_a_prompt_works(frozen: FrozenModel, sentiment: TaskSpec) -> None:
    assert len(classify(frozen, None, sentiment, INPUTS)) == len(INPUTS)
    assert classify(frozen, None, sentiment, []) == []


def test_left_padding_generation_equals_alone(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompt = _prompt(9, seed=3)
    together = generate(frozen, prompt, answer, INPUTS, max_new_tokens=12)
    alone = [generate(frozen, prompt, answer, [text], max_new_tokens=12)[0] for text in INPUTS]
    assert together == alone
    with torch.no_grad():
        assert together[0] == greedy_without_cache(frozen, prompt, answer, INPUTS[0], 12)


def test_generation_stops_at_stop_string(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompt = _prompt(4, seed=1)
    full = generate(frozen, prompt, answer, INPUTS[:1], max_new_tokens=12)[0]
    assert len(full) > 2
    stop = full[2:4]
    cut = generate(frozen, prompt, answer, INPUTS[:1], max_new_tokens=12, stop=[stop, "never-seen"])[0]
    assert cut == full[: full.find(stop)]
    assert stop not in cut


def test_generation_respects_max_new_tokens(frozen: FrozenModel, answer: TaskSpec) -> None:
    prompt = _prompt()
    assert generate(frozen, prompt, answer, INPUTS, max_new_tokens=0) == [""] * len(INPUTS)
    short = generate(frozen, prompt, answer, INPUTS[:1], max_new_tokens=3)[0]
    longer = generate(frozen, prompt, answer, INPUTS[:1], max_new_tokens=12)[0]
    assert longer.startswith(short) and len(short) < len(longer)
    with torch.no_grad():
        assert short == greedy_without_cache(frozen, prompt, answer, INPUTS[0], 3)

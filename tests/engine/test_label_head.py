"""A label head (label_head: true) on every method: where it starts, how it is stored, served in mixed batches and
trained."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.core.mixed import Row, classify_rows, label_scores, logits_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import Prompts, single
from app.engine.core.text import TaskSpec, label_token_ids
from app.engine.formats.artifact import Artifact
from app.engine.formats.peft_adapter import UnsupportedAdapter, to_peft
from app.engine.methods import REGISTRY, get_method, load_segments, parse_config
from app.engine.methods.base import PromptModule
from tests.engine.test_methods import OPTIONS
from workers.training import batch_loss, encode_all, train_prompt

METHODS = sorted(REGISTRY)
THREE = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative", "neutral"))
ANSWER = TaskSpec("generation", "Input: {input}\nOutput:")
TEXTS = ("good", "what is the capital of france?", "they hate that terrible awful place; the service is poor")


def build(frozen: FrozenModel, method: str, spec: TaskSpec = THREE, seed: int = 0, **overrides: Any) -> PromptModule:
    config = parse_config(
        {"method": method, "num_virtual_tokens": 4, "label_head": True, **OPTIONS[method], **overrides}
    )
    return get_method(method).build(frozen, config, spec, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_a_head_starts_as_the_label_words_first_tokens(frozen: FrozenModel, method: str) -> None:
    module = build(frozen, method)
    assert module.head is not None and tuple(module.head.weight.shape) == (3, frozen.hidden_size)
    rows = [Row(0, THREE, text) for text in TEXTS]
    pool = single(frozen, module.segments())
    scores = label_scores(frozen, pool, rows)
    first = [ids[0] for ids in label_token_ids(frozen, THREE)]
    # The same prompt without its head: the LM's logits after each input, restricted to the labels' first tokens.
    bare = single(frozen, module.prompt_segments())
    for got, logits in zip(scores, logits_rows(frozen, bare, rows), strict=True):
        expected = torch.log_softmax(logits[first], dim=-1)
        assert torch.allclose(got, expected, atol=1e-4), (got, expected)


@pytest.mark.parametrize("method", METHODS)
def test_a_stored_head_serves_what_the_trained_module_serves(frozen: FrozenModel, method: str) -> None:
    module = build(frozen, method, seed=2)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(9)))
    stored = Artifact.from_bytes(module.artifact().to_bytes())
    assert stored.config.get("label_head") is True
    assert stored.shapes["head.weight"] == [3, frozen.hidden_size] and stored.shapes["head.bias"] == [3]
    rows = [Row(0, THREE, text) for text in TEXTS]
    live = classify_rows(frozen, single(frozen, module.segments()), rows)
    served = classify_rows(frozen, single(frozen, load_segments(frozen, stored)), rows)
    for a, b in zip(live, served, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_head_and_word_prompts_in_one_mixed_batch_serve_each_row_as_alone(frozen: FrozenModel) -> None:
    artifacts: dict[int, Artifact] = {}
    for number, method in enumerate(METHODS):
        for head in (False, True):
            module = build(frozen, method, seed=number, label_head=head)
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.add_(0.05)
            artifacts[2 * number + int(head)] = Artifact.from_bytes(module.artifact().to_bytes())
    assert sum("head.weight" in a.tensors for a in artifacts.values()) == len(METHODS)

    def loader(prompt_id: int) -> Any:
        return load_segments(frozen, artifacts[prompt_id])

    rows = [Row(p, THREE, text) for p in artifacts for text in TEXTS]
    random.Random(0).shuffle(rows)
    mixed = classify_rows(frozen, Prompts(frozen, loader), rows, max_batch_tokens=600)
    for row, got in zip(rows, mixed, strict=True):
        assert got == pytest.approx(classify_rows(frozen, Prompts(frozen, loader), [row])[0], abs=1e-4)


def test_a_head_over_other_labels_is_refused_at_serving(frozen: FrozenModel) -> None:
    module = build(frozen, "prompt")
    two = TaskSpec("classification", THREE.template, ("positive", "negative"))
    with pytest.raises(ValueError, match="label head over 3 labels; the row scores 2"):
        classify_rows(frozen, single(frozen, module.segments()), [Row(0, two, "good")])


@pytest.mark.parametrize("method", METHODS)
def test_the_loss_reaches_the_head_and_the_prompt(frozen: FrozenModel, method: str) -> None:
    module = build(frozen, method)
    with torch.no_grad():  # at exactly zero, a low-rank factor's partner gets no gradient (as in test_methods)
        for parameter in module.parameters():
            parameter.add_(0.01)
    examples = encode_all(frozen, THREE, [("good", "positive"), ("bad", "negative"), ("ok", "neutral")], 4, "t")
    loss = batch_loss(frozen, module, examples)
    loss.backward()
    assert module.head is not None and module.head.weight.grad is not None
    assert module.head.weight.grad.abs().sum() > 0
    others = [p for name, p in module.named_parameters() if not name.startswith("head.")]
    assert others and all(p.grad is not None and p.grad.abs().sum() > 0 for p in others)
    assert all(p.grad is None for p in frozen.model.parameters())


def test_a_generation_task_takes_no_head(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match="label_head reads a label"):
        build(frozen, "prompt", spec=ANSWER)


def test_a_prompt_with_a_head_has_no_peft_form(frozen: FrozenModel) -> None:
    with pytest.raises(UnsupportedAdapter, match="label head"):
        to_peft(build(frozen, "prompt").artifact(), frozen, "tiny")


def test_a_head_trains_a_learnable_task_and_starts_again_from_its_stored_self(
    frozen: FrozenModel, tmp_path: Path
) -> None:
    rng = random.Random(0)
    words = {"good": "positive", "bad": "negative", "fine": "neutral"}
    rows = [(f"the movie was {w}", words[w]) for w in rng.choices(list(words), k=90)]
    config = parse_config(
        {
            "method": "prompt",
            "num_virtual_tokens": 4,
            "label_head": True,
            "steps": 60,
            "learning_rate": 0.05,
            "eval_every": 20,
            "batch_size": 8,
        }
    )
    result = train_prompt(frozen, THREE, rows[:60], rows[60:], config)
    assert result.metrics["best_val_accuracy"] is not None and result.metrics["best_val_accuracy"] >= 0.9
    assert "head.weight" in result.artifact.tensors
    # A job starting from this version keeps its head; its prompt shapes are what the method expects.
    restarted = get_method("prompt").build(frozen, config, THREE, torch.Generator(), result.artifact)
    assert restarted.head is not None
    assert torch.equal(restarted.head.weight.detach().cpu(), result.artifact.tensors["head.weight"])

"""The training loop (workers/training.py) with the plain prompt method on the tiny random model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.one_prompt import classify
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec
from app.engine.methods import load_segments
from app.engine.methods.prompt import PromptConfig
from tests.tiny_model import build_tiny_model_dir
from workers.training import (
    Cancelled,
    EvalReport,
    StepReport,
    get_lr,
    split_validation,
    train_prompt,
)

NOUNS = ["movie", "film", "book", "food", "service", "place", "day", "night", "story", "music", "song", "game"]
SENTIMENT = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))
ANSWER = TaskSpec("generation", DEFAULT_TEMPLATES["generation"])


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    return load_frozen_model(build_tiny_model_dir(Path(tmp_path_factory.mktemp("tiny"))), device="cpu")


def _reviews(count: int, seed: int) -> list[tuple[str, str]]:
    """Inputs containing "good" are positive, "bad" negative: learnable only by reading the input."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        word = rng.choice(["good", "bad"])
        rows.append((f"the {rng.choice(NOUNS)} was {word}", "positive" if word == "good" else "negative"))
    return rows


def _quick(**overrides: object) -> PromptConfig:
    values: dict[str, object] = {"num_virtual_tokens": 4, "steps": 6, "eval_every": 3, "batch_size": 4}
    return PromptConfig.model_validate({**values, **overrides})


def test_base_weights_are_bit_identical_after_training(frozen: FrozenModel) -> None:
    before = {name: tensor.clone() for name, tensor in frozen.model.state_dict().items()}
    train_prompt(frozen, SENTIMENT, _reviews(16, 0), None, _quick(learning_rate=1.0))
    after = frozen.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not parameter.requires_grad for parameter in frozen.model.parameters())
    assert not frozen.model.training


def test_seeded_training_is_reproducible(frozen: FrozenModel) -> None:
    config = _quick(init="vocab", seed=7)
    first = train_prompt(frozen, SENTIMENT, _reviews(20, 1), None, config)
    second = train_prompt(frozen, SENTIMENT, _reviews(20, 1), None, config)
    assert torch.equal(first.artifact.tensors["prompt"], second.artifact.tensors["prompt"])
    first.metrics.pop("seconds_per_step")
    second.metrics.pop("seconds_per_step")
    assert first.metrics == second.metrics
    other = train_prompt(frozen, SENTIMENT, _reviews(20, 1), None, _quick(init="vocab", seed=8))
    assert not torch.equal(first.artifact.tensors["prompt"], other.artifact.tensors["prompt"])


def test_training_beats_init_on_a_learnable_task(frozen: FrozenModel) -> None:
    val = _reviews(32, 2)
    config = PromptConfig(num_virtual_tokens=16, steps=200, learning_rate=0.1, eval_every=25)
    result = train_prompt(frozen, SENTIMENT, _reviews(64, 1), val, config)
    metrics = result.metrics
    assert metrics["init_val_accuracy"] is not None and metrics["best_val_accuracy"] is not None
    assert metrics["best_val_accuracy"] >= 0.8 > metrics["init_val_accuracy"]
    # Below ln 2 the prompt must be using the input: predicting the label prior alone scores ln 2.
    assert metrics["best_val_loss"] < math.log(2) < metrics["init_val_loss"]
    # The returned prompt is the best one, not the last one.
    predictions = classify(frozen, load_segments(frozen, result.artifact), SENTIMENT, [text for text, _ in val])
    hits = sum(max(p, key=p.__getitem__) == gold for p, (_, gold) in zip(predictions, val, strict=True))
    assert hits / len(val) == metrics["best_val_accuracy"]


def test_generation_training_lowers_validation_loss(frozen: FrozenModel) -> None:
    pairs = [(f"say {word}", word) for word in NOUNS]
    # 80 steps: at 40 the outcome hung on float rounding (lr 0.1 on a random model is chaotic); at 80 every seed
    # tried clears the bar with room.
    config = _quick(steps=80, eval_every=20, learning_rate=0.1, batch_size=6)
    evals: list[EvalReport] = []
    result = train_prompt(frozen, ANSWER, pairs, pairs[:4], config, on_eval=evals.append)
    assert all(report.val_accuracy is None for report in evals)
    assert result.metrics["best_val_accuracy"] is None
    assert result.metrics["best_val_loss"] < 0.8 * evals[0].val_loss  # type: ignore[operator]
    assert result.best_step > 0


def test_progress_is_reported_for_every_step_and_evaluation(frozen: FrozenModel) -> None:
    steps: list[StepReport] = []
    evals: list[EvalReport] = []
    config = _quick(steps=10, eval_every=4, warmup_steps=2)
    result = train_prompt(frozen, SENTIMENT, _reviews(12, 3), None, config, on_step=steps.append, on_eval=evals.append)
    assert [report.step for report in steps] == list(range(1, 11))
    assert all(report.total_steps == 10 and math.isfinite(report.loss) for report in steps)
    assert [report.lr for report in steps] == [get_lr(step, config) for step in range(10)]
    assert [report.step for report in evals] == [0, 4, 8, 10]
    assert result.best_step in (0, 4, 8, 10)
    assert result.artifact.method == "prompt" and result.positions == 4
    prompt = result.artifact.tensors["prompt"]
    assert prompt.shape == (4, 64) and prompt.dtype == torch.float32
    assert result.metrics["trainable_parameters"] == 4 * 64
    assert result.metrics["train_size"] == 11 and result.metrics["val_size"] == 1


def test_should_stop_cancels_the_job(frozen: FrozenModel) -> None:
    steps: list[StepReport] = []
    asked = iter([False, False, True])
    with pytest.raises(Cancelled):
        train_prompt(
            frozen, SENTIMENT, _reviews(8, 4), None, _quick(), on_step=steps.append, should_stop=lambda: next(asked)
        )
    assert len(steps) == 2


def test_unknown_labels_and_tiny_datasets_are_refused(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match='training example 2: label "meh" is not one of'):
        train_prompt(frozen, SENTIMENT, [("a", "positive"), ("b", "meh")], [("c", "negative")], _quick())
    with pytest.raises(ValueError, match="at least 2 examples"):
        train_prompt(frozen, SENTIMENT, [("a", "positive")], None, _quick())


def test_held_out_split_respects_its_bounds() -> None:
    rows = [(str(i), "x") for i in range(50)]
    train, val = split_validation(rows, _quick(validation_fraction=0.2), torch.Generator().manual_seed(0))
    assert (len(train), len(val)) == (40, 10)
    assert sorted(train + val) == sorted(rows)
    _, capped = split_validation(rows, _quick(validation_fraction=0.5, max_validation_examples=3), torch.Generator())
    assert len(capped) == 3
    train, val = split_validation(rows[:2], _quick(validation_fraction=0.8), torch.Generator())
    assert (len(train), len(val)) == (1, 1)


def test_learning_rate_warms_up_then_decays() -> None:
    config = _quick(steps=100, warmup_steps=10, learning_rate=1.0)
    rates = [get_lr(step, config) for step in range(100)]
    assert rates[0] < rates[5] < rates[9] < 1.0
    assert rates[10] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] >= 0.1

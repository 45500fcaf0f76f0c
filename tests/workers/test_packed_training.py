"""Packed training (workers/training.train_prompts): several jobs share each step's pass and train as if alone."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec
from app.engine.methods import TrainConfigUnion
from app.engine.methods.base import TrainConfig
from tests.tiny_model import build_tiny_llama_dir, build_tiny_model_dir, in_float64
from workers.train_steps import batch_losses
from workers.training import (
    Cancelled,
    Ended,
    StepReport,
    TrainJob,
    TrainResult,
    _Run,
    batch_loss,
    encode_all,
    train_prompts,
)

SENTIMENT = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))
TOPIC = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("food", "music", "sport"))
ANSWER = TaskSpec("generation", DEFAULT_TEMPLATES["generation"])
CONFIGS = TypeAdapter(TrainConfigUnion)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    return load_frozen_model(build_tiny_model_dir(Path(tmp_path_factory.mktemp("tiny"))), device="cpu")


def _rows(spec: TaskSpec, count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        word = rng.choice(["good", "bad", "tasty", "loud", "fast"])
        output = spec.labels[len(word) % len(spec.labels)] if spec.labels else f"it is {word}"
        rows.append((f"the {rng.choice(['day', 'song', 'meal', 'game'])} was {word}", output))
    return rows


def _config(method: str, seed: int, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {"method": method, "num_virtual_tokens": 3, "steps": 5, "eval_every": 2}
    values |= {"batch_size": 4, "learning_rate": 0.05, "seed": seed}
    config: TrainConfig = CONFIGS.validate_python({**values, **overrides})
    return config


def _jobs() -> list[TrainJob]:
    """Jobs of different methods, label sets, kinds, lengths, step counts and batch sizes."""
    return [
        TrainJob(SENTIMENT, _rows(SENTIMENT, 12, 0), None, _config("prompt", 1)),
        TrainJob(TOPIC, _rows(TOPIC, 10, 1), _rows(TOPIC, 4, 9), _config("prefix", 2, steps=7)),
        TrainJob(ANSWER, _rows(ANSWER, 9, 2), None, _config("input_mapping", 3, batch_size=3)),
        TrainJob(SENTIMENT, _rows(SENTIMENT, 8, 3), None, _config("around", 4, steps=3)),
        TrainJob(TOPIC, _rows(TOPIC, 10, 4), None, _config("input_dependent", 5, num_virtual_tokens=2)),
    ]


def _same(packed: TrainResult, alone: TrainResult) -> None:
    assert packed.best_step == alone.best_step
    assert packed.artifact.tensors.keys() == alone.artifact.tensors.keys()
    for name, tensor in alone.artifact.tensors.items():
        # Float noise from padding differs packed and alone; Adam's normalised steps carry a little of it on.
        torch.testing.assert_close(packed.artifact.tensors[name], tensor, atol=5e-4, rtol=1e-2)
    for key in ("best_val_loss", "init_val_loss", "final_train_loss"):
        assert packed.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4, abs=1e-5)
    assert packed.metrics["best_val_accuracy"] == alone.metrics["best_val_accuracy"]


def test_packed_jobs_train_exactly_as_each_alone(frozen: FrozenModel) -> None:
    alone = [train_prompts(frozen, [job])[0] for job in _jobs()]
    packed = train_prompts(frozen, _jobs())
    for one, together in zip(alone, packed, strict=True):
        assert isinstance(one, TrainResult) and isinstance(together, TrainResult)
        _same(together, one)
        assert one.metrics["packed_with"] == 0
    # The five jobs shared their passes (the shortest job ran 3 steps beside all four others).
    assert [result.metrics["packed_with"] for result in packed] == [4, 4, 4, 4, 4]  # type: ignore[union-attr]


def test_a_failing_job_ends_alone_and_the_others_train_as_alone(frozen: FrozenModel) -> None:
    def fail_at_step_2(report: StepReport) -> None:
        if report.step == 2:
            raise RuntimeError("the progress store went away")

    jobs = _jobs()
    jobs[1].on_step = fail_at_step_2
    jobs.insert(0, TrainJob(SENTIMENT, [("the day was good", "neutral")] * 3, None, _config("prompt", 6)))
    outcomes = train_prompts(frozen, jobs)
    assert isinstance(outcomes[0], ValueError) and "neutral" in str(outcomes[0])
    assert isinstance(outcomes[2], RuntimeError)
    for index in (1, 3, 4, 5):
        alone = train_prompts(frozen, [_jobs()[index - 1]])[0]
        result = outcomes[index]
        assert isinstance(result, TrainResult) and isinstance(alone, TrainResult)
        _same(result, alone)


def test_a_cancelled_job_stops_at_its_next_step_while_the_others_finish(frozen: FrozenModel) -> None:
    steps: list[int] = []
    jobs = _jobs()[:2]
    jobs[0].on_step = lambda report: steps.append(report.step)
    jobs[0].should_stop = lambda: len(steps) >= 2
    outcomes = train_prompts(frozen, jobs)
    assert isinstance(outcomes[0], Cancelled) and "step 3" in str(outcomes[0])
    assert steps == [1, 2]
    alone = train_prompts(frozen, [_jobs()[1]])[0]
    assert isinstance(outcomes[1], TrainResult) and isinstance(alone, TrainResult)
    _same(outcomes[1], alone)


def test_a_refilled_slot_trains_a_new_job_beside_the_running_ones_as_alone(frozen: FrozenModel) -> None:
    jobs = _jobs()
    bad = TrainJob(SENTIMENT, [("the day was good", "neutral")] * 3, None, _config("prompt", 6))
    later = [jobs[2], bad, jobs[3], jobs[4]]
    ended: list[Ended] = []

    def refill(end: Ended) -> TrainJob | None:
        ended.append(end)
        return later.pop(0) if later else None

    outcomes = train_prompts(frozen, jobs[:2], refill=refill)
    # The given jobs' outcomes first, then those refill returned, in its order; a job that cannot start ends at once
    # and its slot is refilled in turn.
    assert len(outcomes) == 6 and isinstance(outcomes[3], ValueError) and later == []
    assert [end.job for end in ended] == [jobs[0], jobs[1], bad, jobs[2], jobs[3], jobs[4]]
    assert [end.steps for end in ended] == [5, 7, 0, 5, 3, 5]
    # Steps 1-5: the first two jobs; 6-7: the second beside the third, refilled in the first's slot; 8-10: the third
    # beside the fourth (refilled past the one that could not start); 11-15: the last alone.
    assert [end.packed_with for end in ended] == [1, 1, 0, 1, 1, 0]
    for packed, job in zip([*outcomes[:3], *outcomes[4:]], _jobs(), strict=True):
        alone = train_prompts(frozen, [job])[0]
        assert isinstance(packed, TrainResult) and isinstance(alone, TrainResult)
        _same(packed, alone)


def test_a_job_with_its_own_objective_trains_beside_packed_ones(frozen: FrozenModel) -> None:
    """A distillation-style objective runs its own pass; here it is the default loss, so it must match alone."""

    def jobs() -> list[TrainJob]:
        made = _jobs()[:2]
        first = made[0]
        config = first.config
        examples = encode_all(frozen, first.spec, first.train, config.num_virtual_tokens, "training")
        first.objective = lambda module, indices: batch_loss(frozen, module, [examples[i] for i in indices])
        return made

    alone = [train_prompts(frozen, [job])[0] for job in _jobs()[:2]]
    together = train_prompts(frozen, jobs())
    for one, packed in zip(alone, together, strict=True):
        assert isinstance(one, TrainResult) and isinstance(packed, TrainResult)
        _same(packed, one)
    assert [r.metrics["packed_with"] for r in together] == [0, 0]  # type: ignore[union-attr]


def _packed_equal_alone_in_float64(frozen: FrozenModel) -> None:
    wide = in_float64(frozen)
    alone = [train_prompts(wide, [job])[0] for job in _jobs()]
    packed = train_prompts(wide, _jobs())
    for one, together in zip(alone, packed, strict=True):
        assert isinstance(one, TrainResult) and isinstance(together, TrainResult)
        assert together.best_step == one.best_step
        for name, tensor in one.artifact.tensors.items():
            torch.testing.assert_close(together.artifact.tensors[name], tensor, atol=1e-9, rtol=1e-9)


def test_in_float64_packed_jobs_match_alone_far_below_float32_rounding(frozen: FrozenModel) -> None:
    """Packed rows are padded to other lengths than alone, so float32 results differ by rounding that Adam's
    normalised steps carry on (the tolerance above). In float64 that rounding is 1e-16: what is left would be a
    leak between jobs sharing a pass."""
    _packed_equal_alone_in_float64(frozen)


def test_in_float64_packed_jobs_match_alone_on_a_tiny_llama(tmp_path: Path) -> None:
    """The same on the default model's architecture (rotary positions, grouped key/value heads, RMSNorm)."""
    _packed_equal_alone_in_float64(load_frozen_model(build_tiny_llama_dir(tmp_path / "llama"), device="cpu"))


def test_a_batch_loss_is_the_same_beside_longer_rows_of_its_own_prompt(frozen: FrozenModel) -> None:
    """The first job's first examples scored alone, and again in one pass with the rest of its examples (some
    longer: the first are padded by more slots), in float64: padding changes nothing."""
    wide = in_float64(frozen)
    run = _Run(wide, _jobs()[0])
    first, rest = run.train_examples[:4], run.train_examples[4:]
    assert max(len(e.input_ids) for e in rest) > max(len(e.input_ids) for e in first)
    with torch.no_grad():
        alone = batch_losses(wide, [(run.module, first)])[0]
        beside = batch_losses(wide, [(run.module, first), (run.module, rest)])[0]
    torch.testing.assert_close(beside, alone, atol=1e-9, rtol=1e-9)

"""A tune job's trials trained packed (workers/jobs/tune/trials.py): up to `search.pack` trials share each step's
pass, a slot is refilled as its trial ends, the budget counts every trial step, and pruning stays per trial."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import TaskSpec
from app.engine.methods import parse_config
from tests.api.helpers import toy_examples
from tests.tiny_model import build_tiny_model_dir
from workers.jobs.base import JobContext, Trained
from workers.jobs.tune.options import TuneOptions
from workers.jobs.tune.search import search
from workers.train_steps import split_validation
from workers.training import Cancelled, train_prompt

SENTIMENT = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
# Learning rates from far too small to useful: some trials learn, the others fall behind and are pruned.
# No early stopping (patience): these tests count the steps trials run to their end or to the pruner.
WIDE = {
    "methods": ["prompt"],
    "num_virtual_tokens": [2],
    "learning_rate": [1e-6, 1.0],
    "label_head": [False],
    "patience": None,
}


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    return load_frozen_model(build_tiny_model_dir(Path(tmp_path_factory.mktemp("tiny"))), device="cpu")


@dataclass
class Recorded:
    """What a search told its job: its curve, totals, trial rows (the latest of each) and ended trials' events."""

    steps: list[int] = field(default_factory=list)
    evals: list[int] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    ended: list[dict[str, Any]] = field(default_factory=list)  # a `trial` event's data, in the order they ended
    events: list[str] = field(default_factory=list)
    stop_after: int | None = None  # should_stop() turns true once the job reached this step
    began: dict[int, float] = field(default_factory=dict)  # when each trial was asked (time.monotonic())


def _search(frozen: FrozenModel, seen: Recorded, budget: dict[str, Any], **space: Any) -> Trained:
    options = TuneOptions.model_validate({"budget": budget, "search": {**WIDE, **space}, "seed": 3})

    def record_trial(number: int, values: dict[str, Any], details: dict[str, Any] | None = None, /) -> None:
        seen.rows[number] = values
        seen.began.setdefault(number, time.monotonic())
        if values["state"] != "running":
            seen.ended.append({"number": number, **values, **(details or {})})

    ctx = JobContext(
        model=frozen,
        spec=SENTIMENT,
        train=[(row["input"], row["output"]) for row in toy_examples(48)],
        val=None,
        config=parse_config({"method": "prompt", "seed": 3}),
        options=options,
        init=None,
        on_step=lambda report: seen.steps.append(report.step),
        on_eval=lambda report: seen.evals.append(report.step),
        should_stop=lambda: seen.stop_after is not None and bool(seen.steps) and seen.steps[-1] >= seen.stop_after,
        event=lambda kind, message, data: seen.events.append(kind),
        set_total_steps=seen.totals.append,
        record_trial=record_trial,
    )
    return search(ctx, options)


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["began_at_step"] < b["ended_at_step"] and b["began_at_step"] < a["ended_at_step"]


def test_a_packed_search_refills_its_slots_prunes_and_keeps_its_best_finished_trial(frozen: FrozenModel) -> None:
    seen = Recorded()
    result = _search(frozen, seen, {"steps": 120}, steps_per_trial=10, pack=4)
    states = [trial["state"] for trial in seen.ended]
    assert "pruned" in states and "finished" in states and len(seen.ended) > 4
    assert sorted(seen.rows) == list(range(len(seen.rows))) and len(seen.ended) == len(seen.rows)
    # The budget counts every trial step; the job's step counts them one by one, its total the budget.
    assert sum(trial["steps"] for trial in seen.ended) == seen.steps[-1] <= 120
    assert seen.steps == list(range(1, len(seen.steps) + 1)) and set(seen.totals) == {120}
    assert seen.evals == sorted(seen.evals)
    # Four trials shared each pass, their lifetimes overlap, and each slot was refilled when its trial ended.
    first, refilled = seen.ended[:4], [t for t in seen.ended if t["number"] >= 4]
    assert max(trial["packed_with"] for trial in seen.ended) == 3
    assert any(_overlap(a, b) for a in seen.ended for b in seen.ended if a is not b)
    assert all(trial["began_at_step"] == 0 for trial in seen.ended if trial["number"] < 4)
    ends = {trial["ended_at_step"] for trial in seen.ended}
    assert refilled and all(trial["began_at_step"] in ends for trial in refilled)
    assert all(trial["began_at_step"] > 0 for trial in refilled) and len(first) == 4
    for trial in seen.ended:
        if trial["state"] == "pruned":
            assert trial["steps"] < 10 and len(trial["scores"]) >= 2
        if trial["state"] == "finished":
            assert trial["steps"] == trial["hyperparameters"]["steps"] and trial["value"] == max(trial["scores"])
    finished = [trial for trial in seen.ended if trial["state"] == "finished"]
    best = max(finished, key=lambda trial: (trial["value"], -trial["number"]))
    assert result.lineage["best_trial"] == best["number"] and result.metrics["pack"] == 4
    assert result.hyperparameters["learning_rate"] == best["hyperparameters"]["learning_rate"]


def test_the_same_seed_gives_the_same_packed_search(frozen: FrozenModel) -> None:
    first, again = Recorded(), Recorded()
    one = _search(frozen, first, {"steps": 40}, steps_per_trial=5, pack=3)
    two = _search(frozen, again, {"steps": 40}, steps_per_trial=5, pack=3)
    assert first.ended == again.ended and first.steps == again.steps
    assert one.lineage == two.lineage
    assert {**one.metrics, "seconds_per_step": 0} == {**two.metrics, "seconds_per_step": 0}  # all but timings
    for name, tensor in one.artifact.tensors.items():
        assert torch.equal(tensor, two.artifact.tensors[name])


def test_the_budget_is_never_exceeded_and_no_trial_is_too_short_to_rank(frozen: FrozenModel) -> None:
    seen = Recorded()
    _search(frozen, seen, {"steps": 23}, steps_per_trial=10, pack=4)
    steps = [trial["hyperparameters"]["steps"] for trial in seen.ended]
    assert sum(trial["steps"] for trial in seen.ended) <= 23 and sum(steps) <= 23
    assert min(steps) >= 5 and seen.steps[-1] <= 23


def test_pack_1_trains_one_trial_after_another_each_as_alone(frozen: FrozenModel) -> None:
    seen = Recorded()
    result = _search(frozen, seen, {"steps": 30}, steps_per_trial=10, pack=1)
    assert [trial["number"] for trial in seen.ended] == list(range(len(seen.ended)))
    for before, after in zip(seen.ended, seen.ended[1:], strict=False):
        assert after["began_at_step"] == before["ended_at_step"]
    assert all(trial["packed_with"] == 0 for trial in seen.ended)
    # The kept trial is the one its config trains to alone, as a train job would.
    best = next(trial for trial in seen.ended if trial["number"] == result.lineage["best_trial"])
    holdout = parse_config({"method": "prompt", "validation_fraction": 0.2, "seed": 3})
    rows = [(row["input"], row["output"]) for row in toy_examples(48)]
    train, val = split_validation(rows, holdout, torch.Generator().manual_seed(3))
    alone = train_prompt(frozen, SENTIMENT, train, val, parse_config(best["hyperparameters"]))
    assert alone.value == best["value"] and alone.best_step == result.best_step
    for name, tensor in alone.artifact.tensors.items():
        assert torch.equal(tensor, result.artifact.tensors[name])


def test_a_cancel_stops_every_trial_of_the_pack_at_its_next_step(frozen: FrozenModel) -> None:
    seen = Recorded(stop_after=7)
    with pytest.raises(Cancelled):
        _search(frozen, seen, {"steps": 200}, steps_per_trial=10, pack=3)
    assert seen.steps[-1] <= 7 + 2  # the pass under way ends (at most two trials beside the one that crossed it)
    assert all(row["state"] == "running" for row in seen.rows.values())  # none told as ended
    assert len(seen.rows) == 3  # no trial asked after the cancel


def test_a_time_budget_asks_no_trial_after_its_deadline(frozen: FrozenModel) -> None:
    seen, started = Recorded(), time.monotonic()
    _search(frozen, seen, {"minutes": 0.01}, steps_per_trial=5, pack=2)
    ended = time.monotonic()
    # Every trial was asked within the 0.6 s (plus the search's setup); the ones running then trained to their end.
    assert all(at - started < 0.6 + 0.5 for at in seen.began.values()) and ended - started > 0.6
    assert seen.ended and all(trial["state"] in ("finished", "pruned", "failed") for trial in seen.ended)
    assert seen.totals == sorted(seen.totals) and seen.steps[-1] <= seen.totals[-1]

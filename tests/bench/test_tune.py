"""bench.tune keeps every finished cell in its results file and runs only what is missing; its report checks the
issue's targets with the margin of each."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from bench import tune
from bench.quality_data import TASKS, QualityTask, Splits
from bench.tune_report import report

WORDS = {"positive": ["good", "great", "nice", "fine"], "negative": ["bad", "awful", "poor", "terrible"]}


def _draw(train: int, val: int, test: int, seed: int) -> Splits:
    """Short reviews the tiny model's tokenizer reads in a few tokens, half of each label."""
    rng = random.Random(seed)
    pairs = [(f"the {noun} was {word}", label) for label, words in WORDS.items() for word in words for noun in "ab"]
    rng.shuffle(pairs)
    return Splits(pairs[:train], pairs[train : train + val], pairs[train + val : train + val + test])


@pytest.fixture
def tiny_task(monkeypatch: pytest.MonkeyPatch) -> str:
    spec = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative"))
    monkeypatch.setitem(TASKS, "tiny", QualityTask("tiny", spec, "{input}", "{input} {output}", 4, _draw))
    return "tiny"


def _argv(out: Path, *extra: str) -> list[str]:
    sizes = ["--train", "6", "--val", "4", "--test", "6", "--single-steps", "2", "--budget", "10"]
    search = ["--steps-per-trial", "5", "--ensemble", "2", "--methods", "prompt,prefix"]
    return ["--tasks", "tiny", "--seeds", "0", *sizes, *search, "--out", str(out), *extra]


def test_a_rerun_reads_finished_cells_back_and_runs_only_cells_of_other_settings(
    frozen: FrozenModel, tiny_task: str, tmp_path: Path
) -> None:
    out = tmp_path / "tune.jsonl"
    only = ["--only", "prompt,tune,tfidf_logreg"]
    first = tune.main(_argv(out, *only), frozen)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["config"] for r in lines) == ["prompt", "tfidf_logreg", "tune"]
    assert not any(r.get("error") for r in lines)
    searched = next(r for r in lines if r["config"] == "tune")
    assert searched["search_steps"] <= 10 and sum(searched["trials"].values()) == len(searched["trial_log"])
    assert {t["method"] for t in searched["trial_log"]} <= {"prompt", "prefix"}
    assert "| tune (best trial) | " in first and "| tune >= TF-IDF + LR | tiny (1 seed) |" in first

    assert tune.main(_argv(out, *only), frozen) == first
    assert len(out.read_text().splitlines()) == 3

    tune.main(_argv(out, "--only", "prompt", "--single-steps", "3"), frozen)
    assert [json.loads(line)["settings"].get("steps") for line in out.read_text().splitlines()][-1] == 3
    assert len(out.read_text().splitlines()) == 4
    assert tune.main(_argv(out, *only, "--report"), frozen) == first


def _cell(task: str, config: str, kind: str, accuracy: float, **fields: Any) -> dict[str, Any]:
    return {"task": task, "seed": 0, "config": config, "kind": kind, "accuracy": accuracy, **fields}


def test_the_report_checks_each_target_with_its_margin_and_picks_peft_on_validation() -> None:
    tune_fields: dict[str, Any] = {
        "ensemble_accuracy": 0.84,
        "distilled_accuracy": 0.79,
        "wall_seconds": 60,
        "search_seconds": 50,
    }
    tune_fields |= {"trials": {"finished": 3, "pruned": 2, "failed": 0}, "search_steps": 1000, "method": "prefix"}
    tune_fields |= {"hyperparameters": {"label_head": True}, "ensemble_methods": ["prefix", "prompt"]}
    records = [
        _cell("a", "prompt", "single", 0.78),
        _cell("a", "prefix", "single", 0.82),
        _cell("a", "peft_prompt_tuning", "peft", 0.90, best_val_accuracy=0.5),
        _cell("a", "peft_prefix_tuning", "peft", 0.60, best_val_accuracy=0.7),
        _cell("a", "tune", "tune", 0.80, **tune_fields),
        _cell("a", "tfidf_logreg", "classic", 0.70),
        _cell("a", "probe_logreg", "classic", 0.85),
    ]
    text = report(records, ["a"], "test")

    assert "| PEFT's best (on validation) | 0.600 ± 0.000 (1) |" in text
    assert "| tune >= best single method - 1 | a (1 seed) | 0.800 | prefix 0.820 | -1.0 | no |" in text
    assert "| tune >= TF-IDF + LR | a (1 seed) | 0.800 | 0.700 | +10.0 | yes |" in text
    assert "| tune >= probe + LR | a (1 seed) | 0.800 | 0.850 | -5.0 | no |" in text
    assert "| mean tune >= mean prompt + 3 | mean of 1 task | 0.800 | prompt 0.780 | -1.0 | no |" in text
    assert "| prefix + label head | prefix, prompt | 0.8 | - | 0.800 | +4.0 | -1.0 |" in text
    assert "(4 checked)" in text

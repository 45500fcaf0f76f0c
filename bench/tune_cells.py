"""bench.tune's cells: how each config of a (task, seed) trains and what it records, test accuracy first."""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from typing import Any

from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.methods import TrainConfig, load_segments, parse_config
from app.services.ensembles import average
from bench.quality import PEFT_TOKENS, held_out
from bench.quality_data import QualityTask, Splits
from bench.quality_peft import train_peft
from bench.transfer_jobs import job_context
from bench.tune_baselines import probe, tfidf
from workers.jobs import KINDS
from workers.jobs.base import Trained
from workers.jobs.distill.options import Distillation, DistillOptions, PromptTeacher
from workers.jobs.tune.options import SearchSpace, StepBudget, TuneOptions
from workers.training import train_prompt

DEFAULTS = parse_config({"method": "prompt"})  # steps, batch size and validation points every single method uses


def single_config(name: str, seed: int, steps: int) -> TrainConfig:
    """A method at its defaults; at other steps, validation and warm-up shrink with them."""
    default = parse_config({"method": name, "seed": seed})
    if steps == default.steps:
        return default
    return parse_config(
        {
            "method": name,
            "seed": seed,
            "steps": steps,
            "eval_every": min(default.eval_every, steps),
            "warmup_steps": min(default.warmup_steps, steps // 10),
        }
    )


Runner = Callable[[FrozenModel, QualityTask, str, Splits, argparse.Namespace, int], dict[str, Any]]


def run_single(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One registered method at its defaults (or --single-steps), scored on test."""
    result = train_prompt(frozen, task.spec, splits.train, splits.val, single_config(name, seed, args.single_steps))
    return {
        "accuracy": held_out(frozen, task, load_segments(frozen, result.artifact), task.spec, splits.test),
        "best_step": result.best_step,
        "best_val_accuracy": result.metrics["best_val_accuracy"],
        "seconds_per_step": result.metrics["seconds_per_step"],
    }


def run_peft(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One PEFT method as bench.quality trains it, at the single methods' steps, batch and validation points."""
    steps = args.single_steps
    outcome = train_peft(
        frozen,
        name,
        task.spec,
        splits.train,
        splits.val,
        splits.test,
        steps=steps,
        batch_size=DEFAULTS.batch_size,
        eval_every=min(DEFAULTS.eval_every, steps),
        seed=seed,
        num_virtual_tokens=PEFT_TOKENS,
        max_new_tokens=task.max_new_tokens,
    )
    keep = ("accuracy", "best_step", "best_val_accuracy", "seconds_per_step", "learning_rate")
    return {key: outcome[key] for key in keep}


def run_classic(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    if name == "tfidf_logreg":
        return tfidf(splits.train, splits.val, splits.test)
    return probe(frozen, task, splits.train, splits.val, splits.test)


def _test_scores(frozen: FrozenModel, task: QualityTask, kept: list[Trained], splits: Splits) -> dict[str, Any]:
    """The best trial's test accuracy and, for classification with 2+ kept trials, their ensemble's."""
    if task.spec.kind != "classification":
        best = held_out(frozen, task, load_segments(frozen, kept[0].artifact), task.spec, splits.test)
        return {"accuracy": best, "ensemble_accuracy": None}
    inputs = [text for text, _ in splits.test]
    members = [classify(frozen, load_segments(frozen, t.artifact), task.spec, inputs, batch_size=16) for t in kept]

    def accuracy(scored: list[dict[str, float]]) -> float:
        right = [max(row, key=row.__getitem__) == gold for row, (_, gold) in zip(scored, splits.test, strict=True)]
        return sum(right) / len(right)

    return {
        "accuracy": accuracy(members[0]),
        "ensemble_accuracy": accuracy(average(members)) if len(members) > 1 else None,
    }


def _distilled(frozen: FrozenModel, task: QualityTask, kept: list[Trained], splits: Splits) -> float:
    """What `distill: true` adds after the same search: the distill job at its defaults, the kept trials as its
    teachers, the best trial's config as its student; the student's test accuracy."""
    options = DistillOptions(teacher=PromptTeacher(prompts=list(range(1, len(kept) + 1))), distillation=Distillation())
    config = parse_config(kept[0].hyperparameters)
    ctx = job_context(frozen, task.spec, config, options, list(splits.train), list(splits.val))
    ctx.teachers = [(number, trained.artifact) for number, trained in enumerate(kept, start=1)]
    student = KINDS["distill"].run(ctx)
    return held_out(frozen, task, load_segments(frozen, student.artifact), task.spec, splits.test)


def run_tune(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One search through the tune job's own code; its best trial, the ensemble of the kept ones, and the prompt
    distilled from them, each on test."""
    methods = args.methods.split(",") if args.methods != "all" else "all"
    search = SearchSpace(methods=methods, steps_per_trial=args.steps_per_trial)
    options = TuneOptions(
        budget=StepBudget(steps=args.budget), search=search, seed=seed, ensemble=args.ensemble or None
    )
    base = parse_config({"method": "prompt", "seed": seed})
    ctx = job_context(frozen, task.spec, base, options, list(splits.train), list(splits.val))
    trials: dict[int, dict[str, Any]] = {}

    def record_trial(number: int, values: dict[str, Any], details: dict[str, Any] | None = None, /) -> None:
        trials[number] = values  # a trial's last row is how it ended
        if values["state"] != "running":  # progress: each ended trial, as the job's `trial` event says it
            shown = "-" if values["value"] is None else f"{values['value']:.3f}"
            head = values["hyperparameters"].get("label_head")
            print(
                f"  [{task.name} seed {seed}] trial {number} {values['state']}: {values['method']} "
                f"(label_head {head}) {values['steps']} steps, value {shown}",
                flush=True,
            )

    ctx.record_trial = record_trial
    ctx.event = lambda kind, message, data: print(f"  [{task.name} seed {seed}] {kind}: {message}", flush=True)
    started = time.perf_counter()
    result = KINDS["tune"].run(ctx)
    kept = [result, *result.members]
    record: dict[str, Any] = {
        "method": result.hyperparameters["method"],
        "hyperparameters": result.hyperparameters,
        "trials": result.metrics["trials"],
        "search_steps": result.metrics["search_steps"],
        "search_seconds": time.perf_counter() - started,
        "ensemble_methods": [t.hyperparameters["method"] for t in kept] if args.ensemble else [],
        "pack": result.metrics.get("pack"),
        "trial_log": [
            {"number": number, "method": row["method"], "state": row["state"], "steps": row["steps"]}
            | {"value": row["value"], "label_head": row["hyperparameters"].get("label_head")}
            for number, row in sorted(trials.items())
        ],
    }
    record.update(_test_scores(frozen, task, kept, splits))
    record["wall_seconds"] = time.perf_counter() - started  # the search and its kept trials' test scoring
    record["distilled_accuracy"] = record["distill_seconds"] = record["distill_error"] = None
    if len(kept) > 1:  # tune distils only an ensemble of two or more finished trials
        started = time.perf_counter()
        try:
            record["distilled_accuracy"] = _distilled(frozen, task, kept, splits)
        except Exception as error:  # the search's own rows stand; the report says why this one is missing
            traceback.print_exc()
            record["distill_error"] = f"{type(error).__name__}: {error}"
        record["distill_seconds"] = time.perf_counter() - started
    return record


RUNNERS: dict[str, Runner] = {"single": run_single, "peft": run_peft, "classic": run_classic, "tune": run_tune}

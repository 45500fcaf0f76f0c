"""The search itself: an Optuna study over trials that train like train jobs, several at once in shared passes
(trials.py), pruned on their validation curves; the best finished trial, an ensemble of the best, or one prompt
distilled from them."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import torch

from app.engine.core.text import TaskSpec
from app.engine.methods import TrainConfig, parse_config
from workers.jobs.base import JobContext, Trained
from workers.jobs.distill.algorithm import distill_objective, prompts_teacher
from workers.jobs.distill.options import Distillation
from workers.jobs.tune.options import TuneOptions
from workers.jobs.tune.trials import Finished, Trials
from workers.train_steps import split_validation
from workers.training import EvalReport, StepReport, TrainResult, train_prompt

MIN_RANKING_EXAMPLES = 50  # below this many validation examples, a point of accuracy is noise between trials


def trial_config(trial: optuna.Trial, options: TuneOptions, spec: TaskSpec, steps: int) -> TrainConfig:
    """The config a trial trains with: its sampled method and fields, the search's seed, `steps` steps."""
    search = options.search
    method = trial.suggest_categorical("method", search.method_names())
    values: dict[str, Any] = {
        "method": method,
        "steps": steps,
        "eval_every": max(1, steps // 5),
        "seed": options.seed,
        "patience": search.patience,
    }
    default = parse_config({"method": method})
    if default.num_virtual_tokens > 0:  # input_mapping adds no positions of its own
        values["num_virtual_tokens"] = trial.suggest_categorical("num_virtual_tokens", search.num_virtual_tokens)
    low, high = search.learning_rate or (default.learning_rate / 5, default.learning_rate * 5)
    values["learning_rate"] = trial.suggest_float(f"learning_rate_{method}", low, high, log=True)
    inits = search.init or (["text", "labels"] if spec.kind == "classification" else ["text"])
    values["init"] = trial.suggest_categorical("init", [i for i in inits if i != "labels" or spec.labels])
    if spec.kind == "classification":
        values["label_head"] = trial.suggest_categorical("label_head", search.label_head or [False, True])
    values["warmup_steps"] = min(default.warmup_steps, max(0, steps // 10))
    return parse_config(values)


def search(ctx: JobContext, options: TuneOptions) -> Trained:
    spec = ctx.task_spec
    train, val = ctx.labeled(ctx.train) or [], ctx.labeled(ctx.val)
    if not val:  # one held-out set for every trial, so their scores rank the same thing
        holdout = parse_config({"method": "prompt", "validation_fraction": 0.2, "seed": options.seed})
        train, val = split_validation(train, holdout, torch.Generator().manual_seed(options.seed))
    if len(val) < MIN_RANKING_EXAMPLES:
        ctx.event(
            "warning",
            f"{len(val)} validation examples rank the trials: a difference of one example is "
            f"{100 / len(val):.1f} points; give a validation_dataset_id of {MIN_RANKING_EXAMPLES}+ examples",
            {"validation_examples": len(val)},
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # constant_liar (experimental in Optuna): a trial asked while others train is kept away from their points
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=options.seed, constant_liar=options.search.pack > 1)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=optuna.pruners.SuccessiveHalvingPruner())
    trials = Trials(ctx, options, study, lambda trial, steps: trial_config(trial, options, spec, steps), train, val)
    trials.run()
    finished, ended, spent = trials.finished, trials.ended, trials.spent
    if not finished:
        raise ValueError(
            f"no trial finished within the budget ({ended['pruned']} pruned, {ended['failed']} failed); "
            "give a larger budget or fewer steps_per_trial"
        )
    ranked = sorted(finished, key=lambda entry: (-entry[0], entry[1]))  # best value first, then earliest
    value, number, result, config = ranked[0]
    ctx.event(
        "tune_chosen",
        f"kept trial {number} ({config.method}, value {value:.4f}) of {sum(ended.values())} trials",
        {"trial": number, "value": value, **ended},
    )
    metrics = {
        **result.metrics,
        "best_trial": number,
        "trials": ended,
        "search_steps": spent,
        "pack": options.search.pack,
    }
    lineage: dict[str, Any] = {"best_trial": number, "trials": list(range(len(study.trials)))}
    kept = ranked[: options.ensemble or 1]
    if options.ensemble is not None:
        lineage["ensemble_trials"] = [entry[1] for entry in kept]
        if len(kept) < options.ensemble:
            ctx.event("warning", f"{len(kept)} trials finished, fewer than the ensemble of {options.ensemble}", {})
    if options.distill and len(kept) > 1:
        student = _distill(ctx, kept, config, train, val, spent)
        return Trained(
            student.artifact,
            student.positions,
            student.best_step,
            {
                **student.metrics,
                "best_trial": number,
                "trials": ended,
                "search_steps": spent,
                "best_trial_value": value,
            },
            config.model_dump(mode="json"),
            lineage={**lineage, "distilled": True},
        )
    members = [
        Trained(
            r.artifact, r.positions, r.best_step, {**r.metrics, "trial": n}, c.model_dump(mode="json"), {"trial": n}
        )
        for _, n, r, c in kept[1:]
    ]
    return Trained(
        result.artifact,
        result.positions,
        result.best_step,
        metrics,
        config.model_dump(mode="json"),
        lineage=lineage,
        members=members,
    )


def _distill(
    ctx: JobContext,
    kept: list[Finished],
    config: TrainConfig,
    train: list[tuple[str, str]],
    val: list[tuple[str, str]],
    offset: int,
) -> TrainResult:
    """One prompt of the best trial's config, distilled from the ensemble of the kept trials (their averaged soft
    outputs and the gold labels, the distill job's objective at its defaults)."""
    numbers = [entry[1] for entry in kept]
    teacher = prompts_teacher(
        ctx.model, ctx.task_spec, "trials " + ", ".join(map(str, numbers)), [entry[2].artifact for entry in kept]
    )
    objective = distill_objective(ctx.model, ctx.task_spec, train, teacher, Distillation())
    total = offset + config.steps
    ctx.set_total_steps(total)

    def on_step(report: StepReport) -> None:
        ctx.on_step(StepReport(offset + report.step, total, report.loss, report.lr))

    def on_eval(report: EvalReport) -> None:
        ctx.on_eval(EvalReport(offset + report.step, report.val_loss, report.val_accuracy))

    result = train_prompt(
        ctx.model,
        ctx.task_spec,
        train,
        val,
        config,
        on_step=on_step,
        on_eval=on_eval,
        should_stop=ctx.should_stop,
        objective=objective,
    )
    ctx.event(
        "distilled",
        f"one prompt distilled from trials {', '.join(map(str, numbers))}: value {result.value:.4f}",
        {"trials": numbers, "value": result.value},
    )
    return result

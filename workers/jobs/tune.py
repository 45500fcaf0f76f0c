"""`"type": "tune"`: the bank searches for the task's best prompt by itself.

An Optuna study samples a method and its fields (length, learning rate, init) per trial (TPE, seeded); each trial
trains through the same loop as a train job, reports its validation score at every evaluation, and a successive
halving pruner stops a trial whose curve falls behind the others at the same point. Every trial ranks on one
held-out validation set (the job's validation dataset, or a seeded fifth of its dataset: never the test data);
the search runs until its budget (optimizer steps over all trials, or minutes) is spent. The stored prompt is the
best finished trial's best checkpoint; every trial is recorded (GET /v1/jobs/{id}/trials, a `trial` event each).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Literal

import optuna
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy.orm import Session

from app.bodies import JobCreateBase, RowId, Strict
from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.methods import REGISTRY, TrainConfig, get_method, parse_config
from app.errors import InvalidInput
from app.services.jobs import Planned, check_training_data
from app.services.tasks import resolve_task
from workers.jobs.base import JobContext, JobKind, Trained
from workers.train_steps import split_validation
from workers.training import EvalReport, StepReport, TrainResult, train_prompt

ENDED = {"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
MAX_FAILED = 20  # trials that fail before the search gives up (a space where nothing trains)
MIN_RANKING_EXAMPLES = 50  # below this many validation examples, a point of accuracy is noise between trials
INITS = ("text", "vocab", "random", "labels")


class StepBudget(Strict):
    steps: int = Field(ge=1, le=100_000, description="Optimizer steps over all trials.")


class TimeBudget(Strict):
    minutes: float = Field(gt=0, le=24 * 60, description="Wall time of the search; the trial running then finishes.")


class SearchSpace(Strict):
    """What a tune job searches over."""

    methods: list[str] | Literal["all"] = Field(default="all", description='Methods to try, or "all".')
    num_virtual_tokens: list[int] = Field(
        default_factory=lambda: [5, 10, 20], min_length=1, max_length=8, description="Prompt lengths to try."
    )
    learning_rate: tuple[float, float] | None = Field(
        default=None,
        description="[low, high], sampled on a log scale; by default each method's own default / 5 to x 5.",
    )
    init: list[Literal["text", "vocab", "random", "labels"]] | None = Field(
        default=None, min_length=1, description='Inits to try; by default "text" (and "labels" for classification).'
    )
    steps_per_trial: int = Field(default=200, ge=5, le=10_000, description="Steps a trial trains at most.")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            unknown = [name for name in value if name not in REGISTRY]
            if unknown or not value:
                raise ValueError(f'methods must be some of {", ".join(sorted(REGISTRY))} (or "all"); got {value}.')
        return value

    @field_validator("num_virtual_tokens")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if any(not 1 <= n <= 256 for n in value):
            raise ValueError("every length must be between 1 and 256.")
        return value

    @model_validator(mode="after")
    def _learning_rate_range(self) -> SearchSpace:
        if self.learning_rate is not None:
            low, high = self.learning_rate
            if not 0 < low < high <= 10:
                raise ValueError("learning_rate is [low, high] with 0 < low < high <= 10.")
        return self

    def method_names(self) -> list[str]:
        return sorted(REGISTRY) if self.methods == "all" else list(dict.fromkeys(self.methods))


class TuneJobCreate(JobCreateBase):
    type: Literal["tune"] = Field(description="Search methods and their fields; keep the best prompt.")
    task: str | int = Field(description="Task id or name.")
    dataset_id: RowId
    validation_dataset_id: RowId | None = None
    budget: StepBudget | TimeBudget = Field(
        default_factory=lambda: StepBudget(steps=1000), description='{"steps": N} or {"minutes": M}.'
    )
    search: SearchSpace = Field(default_factory=SearchSpace)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class TuneOptions(BaseModel):
    """What a tune job stores in Job.options."""

    budget: StepBudget | TimeBudget
    search: SearchSpace
    seed: int = 0


def _score(result: TrainResult) -> float:
    """Higher is better: best validation accuracy, or minus the best validation loss (generation)."""
    accuracy = result.metrics["best_val_accuracy"]
    return float(accuracy) if accuracy is not None else -float(result.metrics["best_val_loss"])  # type: ignore[arg-type]


def trial_config(trial: optuna.Trial, options: TuneOptions, spec: TaskSpec, steps: int) -> TrainConfig:
    """The config a trial trains with: its sampled method and fields, the search's seed, `steps` steps."""
    search = options.search
    method = trial.suggest_categorical("method", search.method_names())
    values: dict[str, Any] = {"method": method, "steps": steps, "eval_every": max(1, steps // 5), "seed": options.seed}
    default = parse_config({"method": method})
    if default.num_virtual_tokens > 0:  # input_mapping adds no positions of its own
        values["num_virtual_tokens"] = trial.suggest_categorical("num_virtual_tokens", search.num_virtual_tokens)
    low, high = search.learning_rate or (default.learning_rate / 5, default.learning_rate * 5)
    values["learning_rate"] = trial.suggest_float(f"learning_rate_{method}", low, high, log=True)
    inits = search.init or (["text", "labels"] if spec.kind == "classification" else ["text"])
    values["init"] = trial.suggest_categorical("init", [i for i in inits if i != "labels" or spec.labels])
    values["warmup_steps"] = min(default.warmup_steps, max(0, steps // 10))
    return parse_config(values)


class Tune(JobKind):
    name: ClassVar[str] = "tune"
    Body = TuneJobCreate
    Options = TuneOptions
    default_promote = "if_better"

    def check(self, session: Session, body: TuneJobCreate, model: FrozenModel | None) -> Planned:
        task = resolve_task(session, body.task)
        if body.search.init is not None and "labels" in body.search.init and task.kind != "classification":
            raise InvalidInput(
                f'init "labels" starts from the label words, and {task.kind} task {task.name!r} has none',
                code="init_prompt_invalid",
            )
        longest = max(body.search.num_virtual_tokens)
        positions = max(
            get_method(name).positions(parse_config({"method": name, "num_virtual_tokens": longest}))
            for name in body.search.method_names()
        )
        check_training_data(session, task, body.dataset_id, body.validation_dataset_id, positions, model, "to tune")
        options = TuneOptions(budget=body.budget, search=body.search, seed=body.seed)
        base = parse_config({"method": "prompt", "seed": body.seed})
        total = body.budget.steps if isinstance(body.budget, StepBudget) else body.search.steps_per_trial
        return Planned(
            self.name,
            base.model_dump(mode="json"),
            options.model_dump(mode="json"),
            total,
            f"tune job queued for task {task.name!r} over {', '.join(body.search.method_names())}",
            task=task,
            dataset_id=body.dataset_id,
            validation_dataset_id=body.validation_dataset_id,
        )

    def run(self, ctx: JobContext) -> Trained:
        return _search(ctx, ctx.options)


def _search(ctx: JobContext, options: TuneOptions) -> Trained:
    spec, frozen = ctx.task_spec, ctx.model
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
    budget, search = options.budget, options.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=options.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(),
    )
    started, spent = time.monotonic(), 0
    best: tuple[float, int, TrainResult, TrainConfig] | None = None
    ended: dict[str, int] = {"finished": 0, "pruned": 0, "failed": 0}

    def left() -> int | None:
        if isinstance(budget, StepBudget):
            return budget.steps - spent
        return None if time.monotonic() - started < budget.minutes * 60 else 0

    while ((remaining := left()) is None or remaining >= 5) and ended["failed"] < MAX_FAILED:
        steps = search.steps_per_trial if remaining is None else min(search.steps_per_trial, remaining)
        total = budget.steps if isinstance(budget, StepBudget) else spent + steps
        ctx.set_total_steps(total)
        trial = study.ask()
        number = trial.number
        try:
            config = trial_config(trial, options, spec, steps)
            get_method(config.method).check(frozen, config)
        except (ValidationError, ValueError) as exc:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            ctx.record_trial(number, _row(trial.params.get("method", "?"), {}, 0, [], None, "failed"))
            ctx.event("warning", f"trial {number}: {exc}", {"number": number})
            ended["failed"] += 1
            continue
        state, ran, scores, result = _train_trial(ctx, trial, config, train, val, spent, total)
        value = _score(result) if result is not None else (max(scores) if scores and state == "pruned" else None)
        if state == "finished":
            study.tell(trial, value)
        else:
            study.tell(trial, state=ENDED[state])
        ctx.record_trial(number, _row(config.method, config.model_dump(mode="json"), ran, scores, value, state))
        ended[state] += 1
        if result is not None and value is not None and (best is None or value > best[0]):
            best = (value, number, result, config)
        spent += ran
    if best is None:
        raise ValueError(
            f"no trial finished within the budget ({ended['pruned']} pruned, {ended['failed']} failed); "
            "give a larger budget or fewer steps_per_trial"
        )
    value, number, result, config = best
    ctx.event(
        "tune_chosen",
        f"kept trial {number} ({config.method}, value {value:.4f}) of {sum(ended.values())} trials",
        {"trial": number, "value": value, **ended},
    )
    metrics = {**result.metrics, "best_trial": number, "trials": ended, "search_steps": spent}
    lineage = {"best_trial": number, "trials": list(range(len(study.trials)))}
    return Trained(
        result.artifact, result.positions, result.best_step, metrics, config.model_dump(mode="json"), lineage=lineage
    )


def _train_trial(
    ctx: JobContext,
    trial: optuna.Trial,
    config: TrainConfig,
    train: list[tuple[str, str]],
    val: list[tuple[str, str]],
    offset: int,
    total: int,
) -> tuple[str, int, list[float], TrainResult | None]:
    """Train one trial, reporting each evaluation to the study (which may prune it) and to the job's curve, its
    steps counted after `offset`; (state, steps run, scores, result when it finished)."""
    scores: list[float] = []
    ran = 0
    shown = config.model_dump(mode="json")

    def on_step(report: StepReport) -> None:
        nonlocal ran
        ran = report.step
        ctx.on_step(StepReport(offset + report.step, total, report.loss, report.lr))

    def on_eval(report: EvalReport) -> None:
        score = report.val_accuracy if report.val_accuracy is not None else -report.val_loss
        scores.append(score)
        ctx.on_eval(EvalReport(offset + report.step, report.val_loss, report.val_accuracy))
        ctx.record_trial(trial.number, _row(config.method, shown, report.step, scores, max(scores), "running"))
        if report.step > 0:
            trial.report(score, step=report.step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {report.step}")

    ctx.record_trial(trial.number, _row(config.method, shown, 0, [], None, "running"))
    try:
        result = train_prompt(
            ctx.model, ctx.task_spec, train, val, config, on_step=on_step, on_eval=on_eval, should_stop=ctx.should_stop
        )
    except optuna.TrialPruned:
        return "pruned", ran, scores, None
    except (ValueError, RuntimeError) as exc:  # this configuration fails; the search goes on
        ctx.event("warning", f"trial {trial.number} failed: {exc}", {"number": trial.number})
        return "failed", ran, scores, None
    return "finished", ran, scores, result


def _row(
    method: str, hyperparameters: dict[str, Any], steps: int, scores: list[float], value: float | None, state: str
) -> dict[str, Any]:
    """A trial's JobTrial columns (non-finite scores stored as None-free floats are kept finite for JSON)."""
    clean = [score if math.isfinite(score) else -1e30 for score in scores]
    return {
        "method": method,
        "hyperparameters": hyperparameters,
        "steps": steps,
        "scores": clean,
        "value": value,
        "state": state,
    }


KIND = Tune()

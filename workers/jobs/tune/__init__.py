"""`"type": "tune"`: the bank searches for the task's best prompt by itself.

An Optuna study samples a method and its fields (length, learning rate, init) per trial (TPE, seeded); each trial
trains through the same loop as a train job, reports its validation score at every evaluation, and a successive
halving pruner stops a trial whose curve falls behind the others at the same point. Every trial ranks on one
held-out validation set (the job's validation dataset, or a seeded fifth of its dataset: never the test data);
the search runs until its budget (optimizer steps over all trials, or minutes) is spent. Up to `search.pack` trials
train at once in shared passes, a slot refilled with a newly asked trial as soon as its trial ends (trials.py). The
stored prompt is the best finished trial's best checkpoint; every trial is recorded (GET /v1/jobs/{id}/trials, a
`trial` event each).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from app.bodies import JobCreateBase, RowId
from app.engine.core.model import FrozenModel
from app.engine.methods import get_method, parse_config
from app.errors import InvalidInput
from app.services.jobs import Planned, check_training_data
from app.services.tasks import resolve_task
from workers.jobs.base import JobContext, JobKind, Trained
from workers.jobs.tune.options import SearchSpace, StepBudget, TimeBudget, TuneOptions
from workers.jobs.tune.search import search


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
    ensemble: int | None = Field(
        default=None,
        ge=2,
        le=8,
        description="Keep the k best finished trials: served as the task's default ensemble (classification), or "
        "with distill, distilled into one prompt.",
    )
    distill: bool = Field(
        default=False, description="Distil the ensemble of the k best trials into one prompt (needs ensemble)."
    )

    @model_validator(mode="after")
    def _distill_needs_ensemble(self) -> TuneJobCreate:
        if self.distill and self.ensemble is None:
            raise ValueError('distill learns from the ensemble of the k best trials: give "ensemble": k (2 to 8).')
        return self


class Tune(JobKind):
    name: ClassVar[str] = "tune"
    Body = TuneJobCreate
    Options = TuneOptions
    default_promote = "if_better"

    def check(self, session: Session, body: TuneJobCreate, model: FrozenModel | None) -> Planned:
        task = resolve_task(session, body.task)
        if body.ensemble is not None and not body.distill and task.kind != "classification":
            raise InvalidInput(
                "an ensemble averages label probabilities: a generation task takes one only distilled into one "
                'prompt; add "distill": true',
                code="ensemble_invalid",
            )
        if body.search.init is not None and "labels" in body.search.init and task.kind != "classification":
            raise InvalidInput(
                f'init "labels" starts from the label words, and {task.kind} task {task.name!r} has none',
                code="init_prompt_invalid",
            )
        if body.search.label_head is not None and True in body.search.label_head and task.kind != "classification":
            raise InvalidInput(
                f"label_head reads a label, and {task.kind} task {task.name!r} has none; leave search.label_head out",
                code="label_head_invalid",
            )
        longest = max(body.search.num_virtual_tokens)
        positions = max(
            get_method(name).positions(parse_config({"method": name, "num_virtual_tokens": longest}))
            for name in body.search.method_names()
        )
        check_training_data(session, task, body.dataset_id, body.validation_dataset_id, positions, model, "to tune")
        options = TuneOptions(
            budget=body.budget, search=body.search, seed=body.seed, ensemble=body.ensemble, distill=body.distill
        )
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
        return search(ctx, ctx.options)


KIND = Tune()

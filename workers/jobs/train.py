"""`"type": "train"`: train the task's prompt with the configured method (workers/training.py).

Train jobs are the one kind a worker packs: run_many trains several claimed jobs in shared forward/backward passes,
each exactly as it would train alone (its own optimizer, schedule, validation, best checkpoint and cancel).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

from pydantic import Field
from sqlalchemy.orm import Session

from app.bodies import JobCreateBase, RowId
from app.engine.core.model import FrozenModel
from app.engine.methods import TrainConfig, TrainConfigUnion, get_method
from app.engine.methods.prompt import PromptConfig
from app.services.jobs import Planned, check_init_for_task, check_method, check_training_data
from app.services.tasks import resolve_task
from workers.auto_init import resolve_auto
from workers.jobs.base import JobContext, JobKind, Trained
from workers.training import TrainJob, TrainResult, train_prompts


class TrainJobCreate(JobCreateBase):
    type: Literal["train"] = Field(default="train", description="Train the task's prompt on a dataset.")
    task: str | int = Field(description="Task id or name.")
    dataset_id: RowId
    validation_dataset_id: RowId | None = None
    hyperparameters: TrainConfigUnion = Field(  # type: ignore[valid-type]
        default_factory=PromptConfig,
        description='The method (`method`, default "prompt") and its hyperparameters.',
    )


def check_training(
    session: Session, body: TrainJobCreate, model: FrozenModel | None, purpose: str, positions: int | None = None
) -> tuple[Any, TrainConfig]:
    """The checks of a job that trains one task's prompt on a dataset (train, length_search): its task and config."""
    task = resolve_task(session, body.task)
    config: TrainConfig = body.hyperparameters
    check_method(session, config, model)
    check_init_for_task(config, task)
    needed = get_method(config.method).positions(config) if positions is None else positions
    check_training_data(session, task, body.dataset_id, body.validation_dataset_id, needed, model, purpose)
    return task, config


def _plan(ctx: JobContext) -> tuple[TrainJob, dict[str, Any]]:
    """The job's training run (with init "auto" resolved to the chosen start) and the lineage of that choice."""
    train, val = ctx.labeled(ctx.train) or [], ctx.labeled(ctx.val)
    config, init, lineage = ctx.config, ctx.init, dict[str, Any]()
    if config.init == "auto":
        config, init, lineage = resolve_auto(ctx.model, ctx.task_spec, train, config, ctx.candidates, ctx.event)
    job = TrainJob(
        ctx.task_spec,
        train,
        val,
        config,
        init=init,
        on_step=ctx.on_step,
        on_eval=ctx.on_eval,
        should_stop=ctx.should_stop,
    )
    return job, lineage


def _trained(ctx: JobContext, result: TrainResult, lineage: dict[str, Any]) -> Trained:
    return Trained(
        result.artifact,
        result.positions,
        result.best_step,
        result.metrics,
        ctx.config.model_dump(mode="json"),
        lineage=lineage,
    )


class Train(JobKind):
    name: ClassVar[str] = "train"
    Body = TrainJobCreate
    packable = True

    def check(self, session: Session, body: TrainJobCreate, model: FrozenModel | None) -> Planned:
        task, config = check_training(session, body, model, "to train")
        return Planned(
            self.name,
            config.model_dump(mode="json"),
            {},
            config.steps,
            f"train job ({config.method}) queued for task {task.name!r}",
            task=task,
            dataset_id=body.dataset_id,
            validation_dataset_id=body.validation_dataset_id,
        )

    def run(self, ctx: JobContext) -> Trained:
        """One training run; the best prompt by validation is the one stored."""
        (outcome,) = self.run_many([ctx])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_many(self, contexts: list[JobContext]) -> list[Trained | Exception]:
        """Train every job packed with the others (all on one frozen model); for each, its prompt or the exception
        that ended it. One job's failure, cancel or loss ends that job alone."""
        outcomes: list[Trained | Exception | None] = [None] * len(contexts)
        planned: list[tuple[int, TrainJob, dict[str, Any]]] = []
        for number, ctx in enumerate(contexts):
            try:
                job, lineage = _plan(ctx)
            except Exception as error:
                outcomes[number] = error
                continue
            planned.append((number, job, lineage))
        if planned:
            results = train_prompts(contexts[0].model, [job for _, job, _ in planned])
            for (number, _, lineage), result in zip(planned, results, strict=True):
                if isinstance(result, TrainResult):
                    outcomes[number] = _trained(contexts[number], result, lineage)
                elif isinstance(result, Exception):
                    outcomes[number] = result
                else:  # KeyboardInterrupt and the like end the call, not one job
                    raise result
        assert all(outcome is not None for outcome in outcomes)
        return cast(list[Trained | Exception], outcomes)


KIND = Train()

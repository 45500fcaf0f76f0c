"""`"type": "train"`: train the task's prompt with the configured method (workers/training.py).

Train jobs are the one kind a worker packs: run_many trains several claimed jobs in shared forward/backward passes,
each exactly as it would train alone (its own optimizer, schedule, validation, best checkpoint and cancel).
"""

from __future__ import annotations

from typing import Any, cast

from workers.jobs.base import JobContext, Trained
from workers.training import TrainJob, TrainResult, train_prompts
from workers.transfer import resolve_auto

TYPE = "train"


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


def run_many(contexts: list[JobContext]) -> list[Trained | Exception]:
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


def run(ctx: JobContext) -> Trained:
    """One training run; the best prompt by validation is the one stored."""
    (outcome,) = run_many([ctx])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome

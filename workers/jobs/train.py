"""`"type": "train"`: train the task's prompt with the configured method (workers/training.py)."""

from __future__ import annotations

from typing import Any

from workers.jobs.base import JobContext, Trained
from workers.training import train_prompt
from workers.transfer import resolve_auto

TYPE = "train"


def run(ctx: JobContext) -> Trained:
    """One training run; the best prompt by validation is the one stored."""
    train, val = ctx.labeled(ctx.train) or [], ctx.labeled(ctx.val)
    config, init, lineage = ctx.config, ctx.init, dict[str, Any]()
    if config.init == "auto":
        config, init, lineage = resolve_auto(ctx.model, ctx.task_spec, train, config, ctx.candidates, ctx.event)
    result = train_prompt(
        ctx.model,
        ctx.task_spec,
        train,
        val,
        config,
        init=init,
        on_step=ctx.on_step,
        on_eval=ctx.on_eval,
        should_stop=ctx.should_stop,
    )
    return Trained(
        result.artifact,
        result.positions,
        result.best_step,
        result.metrics,
        ctx.config.model_dump(mode="json"),
        lineage=lineage,
    )

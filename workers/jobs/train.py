"""`"type": "train"`: train the task's prompt with the configured method (workers/training.py)."""

from __future__ import annotations

from workers.jobs.base import JobContext, Trained
from workers.training import train_prompt

TYPE = "train"


def run(ctx: JobContext) -> Trained:
    """One training run; the best prompt by validation is the one stored."""
    result = train_prompt(
        ctx.model,
        ctx.spec,
        ctx.train,
        ctx.val,
        ctx.config,
        init=ctx.init,
        on_step=ctx.on_step,
        on_eval=ctx.on_eval,
        should_stop=ctx.should_stop,
    )
    return Trained(
        result.artifact, result.positions, result.best_step, result.metrics, ctx.config.model_dump(mode="json")
    )

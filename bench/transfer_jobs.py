"""Run the worker's job kinds in-process for the benchmarks: a JobContext without a database."""

from __future__ import annotations

from typing import Any

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.methods import TrainConfig
from workers.jobs.base import JobContext


def job_context(
    frozen: FrozenModel,
    spec: TaskSpec | None,
    config: TrainConfig,
    options: Any,
    train: list[tuple[str, str | None]] | None = None,
    val: list[tuple[str, str | None]] | None = None,
) -> JobContext:
    """What the worker would hand a job kind, `options` its Options (callbacks do nothing; events are printed)."""
    return JobContext(
        model=frozen,
        spec=spec,
        train=list(train or []),
        val=val,
        config=config,
        options=options,
        init=None,
        on_step=lambda report: None,
        on_eval=lambda report: None,
        should_stop=lambda: False,
        event=lambda kind, message, data: print(f"  [{kind}] {message}", flush=True),
    )

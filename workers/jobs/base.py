"""What a job kind gets from the worker (the task, its data, callbacks) and gives back (a prompt to store)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.artifact import Artifact
from app.engine.methods import TrainConfig
from app.engine.model import FrozenModel
from app.engine.text import TaskSpec
from workers.training import EvalReport, StepReport


@dataclass
class JobContext:
    """Everything one job runs with; the callbacks relay progress and events to the database."""

    model: FrozenModel
    spec: TaskSpec
    train: list[tuple[str, str]]
    val: list[tuple[str, str]] | None
    config: TrainConfig
    options: dict[str, Any]
    init: Artifact | None
    on_step: Callable[[StepReport], None]
    on_eval: Callable[[EvalReport], None]
    should_stop: Callable[[], bool]
    event: Callable[[str, str, dict[str, Any]], None]
    set_total_steps: Callable[[int], None] = field(default=lambda total: None)


@dataclass(frozen=True)
class Trained:
    """The prompt a job stores: its artifact, the positions it adds to a row, summary metrics."""

    artifact: Artifact
    positions: int
    best_step: int
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]

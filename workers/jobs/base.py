"""What a job kind gets from the worker (the task, its data, callbacks) and gives back (a prompt to store)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import TrainConfig
from workers.inputs import Candidate, Pair, Source
from workers.training import EvalReport, StepReport


@dataclass
class JobContext:
    """Everything one job runs with; the callbacks relay progress and events to the database."""

    model: FrozenModel
    spec: TaskSpec | None  # None for a job of no one task (meta_init: see sources)
    train: list[Pair]
    val: list[Pair] | None
    config: TrainConfig
    options: dict[str, Any]
    init: Artifact | None
    on_step: Callable[[StepReport], None]
    on_eval: Callable[[EvalReport], None]
    should_stop: Callable[[], bool]
    event: Callable[[str, str, dict[str, Any]], None]
    set_total_steps: Callable[[int], None] = field(default=lambda total: None)
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the job row's, job-type options included
    teachers: list[tuple[int, Artifact]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def task_spec(self) -> TaskSpec:
        """The job's task (every job kind but meta_init has one)."""
        if self.spec is None:
            raise ValueError("this job kind needs a task, and the job has none.")
        return self.spec

    def labeled(self, pairs: list[Pair] | None) -> list[tuple[str, str]] | None:
        """Pairs that must have outputs (the API refuses datasets of inputs only for these jobs)."""
        if pairs is None:
            return None
        if any(output is None for _, output in pairs):
            raise ValueError("this job needs a dataset with outputs, and its dataset has inputs only.")
        return [(text, output) for text, output in pairs if output is not None]


@dataclass(frozen=True)
class Trained:
    """The prompt a job stores: its artifact, the positions it adds to a row, summary metrics, and how it was
    made (lineage: teachers, source tasks, init version; the worker adds the job's own ids)."""

    artifact: Artifact
    positions: int
    best_step: int
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # a meta-initialisation's

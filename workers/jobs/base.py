"""A job kind, declared in one file (or package) of workers/jobs/: its POST /v1/jobs body, its options, the checks
at enqueue, the inputs it reads, how it runs, and whether it packs with others. The API builds the body union and
the one enqueue path from the registry (workers/jobs/__init__.py); the worker dispatches on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db.models import Job
from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import TrainConfig
from app.services.jobs import Planned
from workers.inputs import Candidate, JobInputs, Pair, Source, load_inputs
from workers.training import EvalReport, StepReport


class RecordTrial(Protocol):
    """Record a trial of a search: its JobTrial columns (values); details go with the `trial` event of one that
    ended (a tune job's: how many trials shared its passes, the job's steps it lived between)."""

    def __call__(self, number: int, values: dict[str, Any], details: dict[str, Any] | None = None, /) -> None: ...


def _no_trials(number: int, values: dict[str, Any], details: dict[str, Any] | None = None, /) -> None:
    """A context that records no trials (tests, bench)."""


@dataclass
class JobContext:
    """Everything one job runs with; the callbacks relay progress and events to the database."""

    model: FrozenModel
    spec: TaskSpec | None  # None for a job of no one task (meta_init: see sources)
    train: list[Pair]
    val: list[Pair] | None
    config: TrainConfig
    options: Any  # the kind's Options instance (None for a kind without options)
    init: Artifact | None
    on_step: Callable[[StepReport], None]
    on_eval: Callable[[EvalReport], None]
    should_stop: Callable[[], bool]
    event: Callable[[str, str, dict[str, Any]], None]
    set_total_steps: Callable[[int], None] = field(default=lambda total: None)
    # a trial of a search (number, JobTrial's columns, its ended event's details): GET /v1/jobs/{id}/trials
    record_trial: RecordTrial = field(default=_no_trials)
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
    # versions stored beside this one (inactive) to serve with it as the task's default ensemble (a tune job's)
    members: list[Trained] = field(default_factory=list)


class JobKind:
    """One job type. Subclasses set the class variables and implement check and run."""

    name: ClassVar[str]
    Body: ClassVar[type[BaseModel]]  # the POST /v1/jobs variant, with `type: Literal[name]`
    Options: ClassVar[type[BaseModel] | None] = None  # stored in Job.options
    packable: ClassVar[bool] = False  # may train in shared passes with other claimed jobs of its kind
    # The Options field holding the kind's own hyperparameters, which the body gives inside `hyperparameters`
    # beside the method's (a distillation's alpha, MAML's loops); None: the kind has none.
    own_hyperparameters: ClassVar[str | None] = None
    default_promote: ClassVar[str] = "always"  # when the body gives no `promote` (app/services/evaluation.py)

    def check(self, session: Session, body: Any, model: FrozenModel | None) -> Planned:
        """Every refusal at enqueue (InvalidInput, NotFound, Conflict), read in the tenant's scope; what to store.
        model is None on an API-only replica: checks that need a tokenizer are the worker's then."""
        raise NotImplementedError

    def options(self, job: Job) -> Any:
        """The job row's options as the kind's Options (validated once more: the row may predate a change)."""
        return None if self.Options is None else self.Options.model_validate(job.options or {})

    def inputs(self, session: Session, job: Job, config: TrainConfig, options: Any, model: FrozenModel) -> JobInputs:
        """What the job reads before any compute; ValueError (the job fails, saying what) for a deleted input."""
        return load_inputs(session, job, config, model)

    def shown(self, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job's hyperparameters and options as GET /v1/jobs shows them (the shape the body took)."""
        hyperparameters, options = dict(job.hyperparameters), dict(job.options or {})
        if self.own_hyperparameters is not None:
            hyperparameters.update(options.pop(self.own_hyperparameters, {}))
        return hyperparameters, options

    def run(self, ctx: JobContext) -> Trained:
        """Train and return the prompt to store (raising ends the job: Cancelled, or failed with the reason)."""
        raise NotImplementedError

    def run_many(self, contexts: list[JobContext]) -> list[Trained | Exception]:
        """Several claimed jobs of this kind (packable kinds train them in shared passes); one outcome each."""
        outcomes: list[Trained | Exception] = []
        for ctx in contexts:
            try:
                outcomes.append(self.run(ctx))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

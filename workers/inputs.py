"""What a job reads from the database before it runs: its examples, init prompt and init `auto` candidates (every
kind), and the pieces some kinds add (teachers: distill; source tasks: meta_init). Read in one session, handed to
the job kind as plain data (no rows, no session)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.db.models import Job
from app.db.repositories import DatasetRepository, PromptRepository, TaskRepository, scope_session
from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import TrainConfig, get_method
from app.services.holdout import excluded_rows
from app.services.tasks import task_spec

Pair = tuple[str, str | None]  # (input, output); output None in a dataset of inputs only
MAX_TRANSFER_CANDIDATES = 32


@dataclass(frozen=True)
class Source:
    """A task a meta_init job learns from: its spec and its labeled examples."""

    task_id: int
    name: str
    dataset_id: int
    spec: TaskSpec
    examples: list[tuple[str, str]]


@dataclass(frozen=True)
class Candidate:
    """A stored version a train job with init "auto" may start from."""

    prompt_id: int
    label: str  # "task sentiment v3", "meta-init words v1"
    artifact: Artifact


@dataclass
class JobInputs:
    spec: TaskSpec | None
    train: list[Pair]
    val: list[Pair] | None
    init: Artifact | None
    teachers: list[tuple[int, Artifact]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


def load_inputs(session: Session, job: Job, config: TrainConfig, model: FrozenModel) -> JobInputs:
    """Everything job reads; ValueError (the job fails, saying what) when something it names was deleted.

    Read as the job's tenant: whatever the job names (checked when it was queued) or picks by itself (the
    candidates of "init": "auto") is the tenant's own.
    """
    scope_session(session, job.tenant)
    spec = None
    if job.task_id is not None:
        task = TaskRepository(session).get(job.task_id)
        assert task is not None  # jobs are deleted with their task
        spec = task_spec(task)
    # The rows held out as the task's evaluation set are read by neither training nor validation: the job's own
    # validation split is then drawn from what remains (app/services/holdout.py).
    held, val_id = job.evaluation_holdout, job.validation_dataset_id
    inputs = JobInputs(
        spec=spec,
        train=_pairs(session, job.dataset_id, excluded_rows(held, job.dataset_id))
        if job.dataset_id is not None or job.task_id is not None
        else [],
        val=_pairs(session, val_id, excluded_rows(held, val_id)) if val_id is not None else None,
        init=_artifact(session, config.init_prompt_id, "init prompt"),
    )
    if config.init == "auto":
        inputs.candidates = _candidates(session, config, model)
    return inputs


def _pairs(session: Session, dataset_id: int | None, excluded: set[int] | None = None) -> list[Pair]:
    dataset = DatasetRepository(session).get(dataset_id, with_examples=True) if dataset_id is not None else None
    if dataset is None:
        raise ValueError(f"dataset {dataset_id} of this job was deleted")
    skip = excluded or set()
    return [(e["input"], e.get("output")) for row, e in enumerate(dataset.examples) if row not in skip]


def read_teachers(session: Session, prompt_ids: list[int]) -> list[tuple[int, Artifact]]:
    """Stored versions a job learns from, by id."""
    found = []
    for prompt_id in prompt_ids:
        artifact = _artifact(session, prompt_id, "teacher prompt")
        assert artifact is not None
        found.append((prompt_id, artifact))
    return found


def _artifact(session: Session, prompt_id: int | None, role: str) -> Artifact | None:
    if prompt_id is None:
        return None
    prompt = PromptRepository(session).get(prompt_id, with_tensors=True)
    if prompt is None:
        raise ValueError(f"{role} {prompt_id} of this job was deleted")
    return Artifact.from_bytes(prompt.tensors)


def read_source(session: Session, task_id: int, task_name: str, dataset_id: int) -> Source:
    """A task a job learns from, with its labeled examples."""
    task = TaskRepository(session).get(task_id)
    if task is None:
        raise ValueError(f"source task {task_name!r} (id {task_id}) of this job was deleted")
    # the task's evaluation set, when held out of this dataset, stays unseen by its meta-initialisation too
    held = DatasetRepository(session).get(task.evaluation_dataset_id) if task.evaluation_dataset_id else None
    excluded = set(held.source_rows or []) if held is not None and held.source_dataset_id == dataset_id else set()
    pairs = _pairs(session, dataset_id, excluded)
    labeled = [(text, output) for text, output in pairs if output is not None]
    return Source(task.id, task.name, dataset_id, task_spec(task), labeled)


def _candidates(session: Session, config: TrainConfig, model: FrozenModel) -> list[Candidate]:
    """The newest stored versions and meta-initialisations this job's prompt could start from."""
    shapes = get_method(config.method).expected_shapes(model, config)
    prompts = PromptRepository(session).compatible(
        method=config.method, fingerprint=model.identity.fingerprint, shapes=shapes, limit=MAX_TRANSFER_CANDIDATES
    )
    found = []
    for prompt in prompts:
        owner = f"task {prompt.task.name}" if prompt.task is not None else f"meta-init {prompt.name or ''}".rstrip()
        found.append(Candidate(prompt.id, f"{owner} v{prompt.version}", Artifact.from_bytes(prompt.tensors)))
    return found

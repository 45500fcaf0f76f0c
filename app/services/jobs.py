"""Job use cases on the API side: the checks job kinds share, the one enqueue path (a kind's `check` says what to
store: workers/jobs/), inspecting a job, cancelling it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import FINISHED_STATUSES, Job, JobEvent, JobMetric, JobStatus, JobTrial, Task
from app.db.repositories import JobRepository, PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.methods import TrainConfig, get_method
from app.engine.methods.base import prompt_shapes
from app.errors import Conflict, InvalidInput, NotFound
from app.services import audit, holdout
from app.services.context_length import first_overflow
from app.services.datasets import check_labels, get_dataset, require_labeled
from app.services.keys import Limits


def check_fits_context(model: FrozenModel, task: Task, examples: list[dict[str, str]], virtual_tokens: int) -> None:
    """Refuse examples that do not fit the model's context once the prompt is prepended."""
    overflow = first_overflow(
        model, task, ((example["input"], example.get("output")) for example in examples), virtual_tokens
    )
    if overflow is not None:
        number, needed = overflow[0] + 1, overflow[1]  # examples are numbered from 1, like dataset lines
        raise InvalidInput(
            f"example {number} needs {needed} tokens with the {virtual_tokens}-token prompt, more than the "
            f"model's context of {model.max_positions}; shorten it or use fewer virtual tokens",
            code="input_too_long",
            details={"example": number, "tokens": needed, "context": model.max_positions},
        )


def check_method(session: Session, config: TrainConfig, model: FrozenModel | None) -> None:
    """Refuse hyperparameters the model cannot run, and an init prompt of another method, model or shape."""
    method = get_method(config.method)
    if model is not None:  # an API-only replica has no model to check against; the worker repeats these checks
        try:
            method.check(model, config)
        except ValueError as exc:
            raise InvalidInput(f"hyperparameters: {exc}", code="invalid_hyperparameters") from exc
    prompt_id = config.init_prompt_id
    if prompt_id is None:
        return
    init = PromptRepository(session).get(prompt_id)
    if init is None:
        raise InvalidInput(
            f"init prompt {prompt_id} does not exist; GET /v1/prompts lists them", code="init_prompt_invalid"
        )
    if init.method != config.method:
        raise InvalidInput(
            f"init prompt {prompt_id} is a {init.method!r} prompt; a {config.method!r} job starts from a "
            f"{config.method!r} prompt",
            code="init_prompt_invalid",
        )
    if model is not None:
        if init.base_model_fingerprint != model.identity.fingerprint:
            raise InvalidInput(
                f"init prompt {prompt_id} belongs to base model {init.base_model_name!r}, not {model.identity.name!r}",
                code="init_prompt_invalid",
            )
        expected = method.expected_shapes(model, config)
        shapes = prompt_shapes(init.shapes or {})
        if shapes != expected:
            raise InvalidInput(
                f"init prompt {prompt_id} has shapes {shapes}; this job's prompt has {expected}: match "
                "num_virtual_tokens and the method's options to it",
                code="init_prompt_invalid",
            )


def check_init_for_task(config: TrainConfig, task: Task) -> None:
    """Refuse what the task cannot give: label words or a label head for a task without labels."""
    if config.init == "labels" and task.kind != "classification":
        raise InvalidInput(
            f'init "labels" starts from the label words, and {task.kind} task {task.name!r} has none; use "text"',
            code="init_prompt_invalid",
        )
    if config.label_head and task.kind != "classification":
        raise InvalidInput(
            f"label_head reads a label, and {task.kind} task {task.name!r} has none; leave label_head out",
            code="label_head_invalid",
        )


def check_training_data(
    session: Session,
    task: Task,
    dataset_id: int,
    validation_dataset_id: int | None,
    positions: int,
    model: FrozenModel | None,
    purpose: str,
) -> None:
    """Refuse datasets a training job cannot learn from: missing, without outputs, of other labels, too small to
    hold one example out, or with an example past the model's context once `positions` are added."""
    datasets = [get_dataset(session, dataset_id, with_examples=True, lock="share")]
    if validation_dataset_id is not None:
        datasets.append(get_dataset(session, validation_dataset_id, with_examples=True, lock="share"))
    for dataset in datasets:
        require_labeled(dataset, f'{purpose}; a distill job with "alpha": 0 learns from inputs alone')
    if validation_dataset_id is None and datasets[0].num_examples < 2:
        raise InvalidInput(
            f"dataset {dataset_id} has {datasets[0].num_examples} example; training needs at least 2 "
            "(one is held out for validation) or a validation_dataset_id",
            code="dataset_too_small",
        )
    for dataset in datasets:
        if task.kind == "classification":
            check_labels(dataset, task.labels)
        if model is not None:  # an API-only replica has no tokenizer; the worker repeats this check
            check_fits_context(model, task, dataset.examples, positions)


@dataclass(frozen=True)
class Planned:
    """A checked POST /v1/jobs request, as a job kind's check returns it: what enqueue stores."""

    job_type: str
    config: dict[str, Any]  # Job.hyperparameters: the method's config, validated at the edge
    options: dict[str, Any]  # Job.options: the kind's own, validated at the edge
    total_steps: int
    message: str  # the "queued" event's
    task: Task | None = None
    dataset_id: int | None = None
    validation_dataset_id: int | None = None


def enqueue(
    session: Session, planned: Planned, *, priority: int, max_attempts: int, promote: str, limits: Limits
) -> Job:
    """Queue a checked job of any kind: one row, one "queued" event; promote: the stored version's policy. A job of
    a task holds out (or skips) the task's evaluation set in the same transaction (app/services/holdout.py)."""
    repo = JobRepository(session)
    held = None
    if planned.task is not None and planned.dataset_id is not None:
        seed = int(planned.config.get("seed", 0))
        held = holdout.decide(session, planned.task, planned.dataset_id, seed, limits)
    job = repo.add(
        Job(
            type=planned.job_type,
            task_id=planned.task.id if planned.task is not None else None,
            dataset_id=planned.dataset_id,
            validation_dataset_id=planned.validation_dataset_id,
            hyperparameters=planned.config,
            options=planned.options,
            status=JobStatus.queued,
            priority=priority,
            progress={"step": 0, "total_steps": planned.total_steps},
            max_attempts=max_attempts,
            promote=promote,
            evaluation_holdout=held.stored if held is not None else None,
        )
    )
    method = planned.config.get("method")
    repo.add_event(job.id, "queued", planned.message, {"priority": priority, "method": method})
    if held is not None and held.event is not None:
        repo.add_event(job.id, *held.event)
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}; GET /v1/jobs lists them", code="job_not_found")
    return job


def list_jobs(
    session: Session, *, task: Task | None, status: JobStatus | None, limit: int, offset: int
) -> Sequence[Job]:
    return JobRepository(session).list(task_id=task.id if task else None, status=status, limit=limit, offset=offset)


def job_events(session: Session, job_id: int, *, after_id: int, limit: int) -> Sequence[JobEvent]:
    get_job(session, job_id)
    return JobRepository(session).events(job_id, after_id=after_id, limit=limit)


METRIC_FIELDS = ("loss", "learning_rate", "val_loss", "val_score")


def job_metrics(session: Session, job_id: int) -> list[dict[str, Any]]:
    """The job's curve, one point per attempt and step: a step's training figures and its evaluation's (recorded
    as separate rows when they were written apart) merged; ordered by attempt, then step."""
    get_job(session, job_id)
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for row in JobRepository(session).metrics(job_id):
        point = merged.setdefault(
            (row.attempt, row.step),
            {"attempt": row.attempt, "step": row.step, "seconds": row.seconds, **dict.fromkeys(METRIC_FIELDS)},
        )
        point["seconds"] = max(point["seconds"], row.seconds)
        for name in METRIC_FIELDS:
            value = getattr(row, name)
            if value is not None:
                point[name] = value
    return [merged[key] for key in sorted(merged)]


def job_trials(session: Session, job_id: int) -> Sequence[JobTrial]:
    """The configurations the job tried (a tune job's), its latest attempt's, by number."""
    get_job(session, job_id)
    return JobRepository(session).trials(job_id)


@dataclass(frozen=True)
class JobUpdates:
    """What a job's stream has not sent yet: the job now, its new events and new metric rows."""

    job: Job
    events: Sequence[JobEvent]
    metrics: Sequence[JobMetric]

    @property
    def finished(self) -> bool:
        return self.job.status in FINISHED_STATUSES


def job_updates(session: Session, job_id: int, *, after_event: int, after_metric: int, limit: int) -> JobUpdates:
    """The job (read first: when it has finished, every event and point it wrote is already visible) and what
    came after the cursors."""
    job = get_job(session, job_id)
    repo = JobRepository(session)
    return JobUpdates(
        job,
        repo.events(job_id, after_id=after_event, limit=limit),
        repo.metrics(job_id, after_id=after_metric, limit=limit),
    )


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once; ask a running job's worker to stop at its next step."""
    job = get_job(session, job_id)
    repo = JobRepository(session)
    if job.status in FINISHED_STATUSES:
        raise Conflict(f"job {job_id} already finished ({job.status.value}); nothing to cancel", code="job_finished")
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        repo.add_event(job.id, "cancelled", "cancelled before it started")
    elif not job.cancel_requested:
        job.cancel_requested = True
        repo.add_event(job.id, "cancel_requested", "cancel requested; the worker stops at its next step")
    session.flush()
    audit.record(session, "cancel", "job", job.id, {"task": job.task_id, "status": job.status.value})
    return job

"""Job use cases on the API side: enqueue a training job, inspect it, cancel it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import FINISHED_STATUSES, Job, JobEvent, JobMetric, JobStatus, Task
from app.db.repositories import JobRepository, PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.methods import TrainConfig, get_method
from app.errors import Conflict, InvalidInput, NotFound
from app.services import audit
from app.services.context_length import first_overflow
from app.services.datasets import check_labels, get_dataset, require_labeled


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
        if init.shapes != expected:
            raise InvalidInput(
                f"init prompt {prompt_id} has shapes {init.shapes}; this job's prompt has {expected}: match "
                "num_virtual_tokens and the method's options to it",
                code="init_prompt_invalid",
            )


def check_init_for_task(config: TrainConfig, task: Task) -> None:
    """Refuse an init the task cannot give: label words of a task without labels."""
    if config.init == "labels" and task.kind != "classification":
        raise InvalidInput(
            f'init "labels" starts from the label words, and {task.kind} task {task.name!r} has none; use "text"',
            code="init_prompt_invalid",
        )


def enqueue_training(
    session: Session,
    *,
    task: Task,
    dataset_id: int,
    validation_dataset_id: int | None,
    config: TrainConfig,
    priority: int,
    max_attempts: int,
    model: FrozenModel | None,
    job_type: str = "train",
    options: dict[str, Any] | None = None,
) -> Job:
    """Validate a training request (any job type, any method) against its task, data and model, then queue it."""
    if job_type == "length_search" and (config.init_prompt_id is not None or config.init == "auto"):
        raise InvalidInput(
            "a length search trains prompts of several lengths, so no one stored prompt fits them all; start it "
            'from "text", "vocab", "random" or "labels"',
            code="init_prompt_invalid",
        )
    check_method(session, config, model)
    check_init_for_task(config, task)
    datasets = [get_dataset(session, dataset_id, with_examples=True, lock="share")]
    if validation_dataset_id is not None:
        datasets.append(get_dataset(session, validation_dataset_id, with_examples=True, lock="share"))
    for dataset in datasets:
        require_labeled(
            dataset,
            f"to {'train' if job_type == 'train' else 'search lengths'}; a distill job with "
            '"alpha": 0 learns from inputs alone',
        )
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
            positions = get_method(config.method).positions(config)
            if job_type == "length_search":
                lengths = (options or {}).get("search", {}).get("lengths")
                if isinstance(lengths, list):
                    positions += max(lengths) - config.num_virtual_tokens
            check_fits_context(model, task, dataset.examples, positions)
    repo = JobRepository(session)
    job = repo.add(
        Job(
            type=job_type,
            task_id=task.id,
            dataset_id=dataset_id,
            validation_dataset_id=validation_dataset_id,
            hyperparameters=config.model_dump(mode="json"),
            options=options or {},
            status=JobStatus.queued,
            priority=priority,
            progress={"step": 0, "total_steps": config.steps},
            max_attempts=max_attempts,
        )
    )
    repo.add_event(
        job.id,
        "queued",
        f"{job_type} job ({config.method}) queued for task {task.name!r}",
        {"priority": priority, "method": config.method},
    )
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

"""Queue the jobs that learn from what is already learned: distillation and meta-initialisation (MAML)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Job, JobStatus, Prompt, Task
from app.db.repositories import JobRepository, PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.core.text import context_template, render
from app.engine.methods import TrainConfig, get_method
from app.errors import Conflict, InvalidInput
from app.services.datasets import check_labels, get_dataset, require_labeled
from app.services.job_types import Distillation, MetaLearning, split_options
from app.services.jobs import check_fits_context, check_init_for_task, check_method
from app.services.tasks import resolve_task, task_spec

MIN_META_TASKS = 3


def _queue(
    session: Session,
    *,
    job_type: str,
    task: Task | None,
    dataset_id: int | None,
    validation_dataset_id: int | None,
    hyperparameters: dict[str, Any],
    options: dict[str, Any],
    priority: int,
    max_attempts: int,
    steps: int,
    message: str,
) -> Job:
    repo = JobRepository(session)
    job = repo.add(
        Job(
            type=job_type,
            task_id=task.id if task is not None else None,
            dataset_id=dataset_id,
            validation_dataset_id=validation_dataset_id,
            hyperparameters=hyperparameters,
            options=options,
            status=JobStatus.queued,
            priority=priority,
            progress={"step": 0, "total_steps": steps},
            max_attempts=max_attempts,
        )
    )
    repo.add_event(job.id, "queued", message, {"priority": priority, "method": hyperparameters.get("method")})
    return job


def _teachers(session: Session, task: Task, ids: list[int], model: FrozenModel | None) -> list[Prompt]:
    """The stored teacher versions, refused unless each is a version of this task that this model serves."""
    teachers = []
    for prompt_id in dict.fromkeys(ids):
        prompt = PromptRepository(session).get(prompt_id)
        if prompt is None or prompt.task_id != task.id:
            where = "does not exist" if prompt is None else "is not a version of this task"
            raise InvalidInput(
                f"teacher prompt {prompt_id} {where}; GET /v1/prompts?task={task.name} lists the task's versions",
                code="teacher_invalid",
            )
        if model is not None and (
            prompt.base_model_fingerprint != model.identity.fingerprint or prompt.hidden_size != model.hidden_size
        ):
            raise InvalidInput(
                f"teacher prompt {prompt_id} was trained on base model {prompt.base_model_name!r} (hidden size "
                f"{prompt.hidden_size}); this service runs {model.identity.name!r} (hidden size {model.hidden_size}), "
                "whose layers cannot read it",
                code="teacher_invalid",
            )
        teachers.append(prompt)
    return teachers


def enqueue_distill(
    session: Session,
    *,
    task: Task,
    dataset_id: int,
    validation_dataset_id: int | None,
    teacher: dict[str, Any],
    hyperparameters: TrainConfig,
    priority: int,
    max_attempts: int,
    model: FrozenModel | None,
) -> Job:
    """Validate a distillation (teacher, student, data) and queue it."""
    stored = hyperparameters.model_dump(mode="json")
    method_part, distillation = split_options(stored, Distillation)
    config = get_method(hyperparameters.method).config_type.model_validate(method_part)
    check_method(session, config, model)
    check_init_for_task(config, task)
    if "prompts" in teacher:
        _teachers(session, task, teacher["prompts"], model)
    dataset = get_dataset(session, dataset_id, with_examples=True, lock="share")
    if distillation.alpha > 0:
        require_labeled(
            dataset, f"for alpha {distillation.alpha} (its gold term); set alpha to 0 to learn from the teacher alone"
        )
    datasets = [dataset]
    if validation_dataset_id is not None:
        datasets.append(get_dataset(session, validation_dataset_id, with_examples=True, lock="share"))
    if validation_dataset_id is None and dataset.num_examples < 2:
        raise InvalidInput(
            f"dataset {dataset_id} has {dataset.num_examples} example; distillation needs at least 2 (one is held "
            "out for validation) or a validation_dataset_id",
            code="dataset_too_small",
        )
    positions = get_method(config.method).positions(config)
    for data in datasets:
        if task.kind == "classification" and data.labeled:
            check_labels(data, task.labels)
        if model is not None:
            check_fits_context(model, task, data.examples, positions)
            if "instruction" in teacher:
                _check_teacher_context(model, task, teacher, data.examples)
    return _queue(
        session,
        job_type="distill",
        task=task,
        dataset_id=dataset_id,
        validation_dataset_id=validation_dataset_id,
        hyperparameters=stored,
        options={"teacher": teacher},
        priority=priority,
        max_attempts=max_attempts,
        steps=config.steps * distillation.generations,
        message=f"distill job ({config.method} student) queued for task {task.name!r}",
    )


def _check_teacher_context(
    model: FrozenModel, task: Task, teacher: dict[str, Any], examples: list[dict[str, str]]
) -> None:
    """Refuse examples that overflow the context once the teacher's instruction and shots precede them."""
    spec = task_spec(task)
    shots = [(shot["input"], shot["output"]) for shot in teacher.get("examples", [])]
    overhead = len(model.encode(context_template(spec, teacher["instruction"], shots))) - len(
        model.encode(spec.template)
    )
    for number, example in enumerate(examples, start=1):
        needed = overhead + len(model.encode(render(spec.template, example["input"]))) + 1
        if needed > model.max_positions:
            raise InvalidInput(
                f"example {number} needs about {needed} tokens after the teacher's instruction and examples, more "
                f"than the model's context of {model.max_positions}; shorten the instruction or give fewer examples",
                code="input_too_long",
                details={"example": number, "tokens": needed, "context": model.max_positions},
            )


def enqueue_meta_init(
    session: Session,
    *,
    name: str,
    tasks: list[dict[str, Any]],
    hyperparameters: TrainConfig,
    priority: int,
    max_attempts: int,
    model: FrozenModel | None,
) -> Job:
    """Validate a meta-learning request (3+ labeled tasks on this base model) and queue it."""
    stored = hyperparameters.model_dump(mode="json", exclude={"steps", "learning_rate", "batch_size", "warmup_steps"})
    method_part, meta = split_options(stored, MetaLearning)
    config = get_method(hyperparameters.method).config_type.model_validate(method_part)
    if config.init in ("labels", "auto"):
        raise InvalidInput(
            f"a meta-initialisation serves tasks of any labels, so it cannot start from init {config.init!r}; use "
            '"text", "vocab", "random" or {"from_prompt": id}',
            code="init_prompt_invalid",
        )
    check_method(session, config, model)
    sources: list[dict[str, Any]] = []
    positions = get_method(config.method).positions(config)
    for entry in tasks:
        task = resolve_task(session, entry["task"])
        dataset = get_dataset(session, entry["dataset_id"], with_examples=True, lock="share")
        require_labeled(dataset, "to meta-learn from a task")
        if task.kind == "classification":
            check_labels(dataset, task.labels)
        if dataset.num_examples < 2:
            raise InvalidInput(
                f"dataset {dataset.id} of task {task.name!r} has {dataset.num_examples} example; a task needs at "
                "least 2 (a support and a query example)",
                code="dataset_too_small",
            )
        if model is not None:
            _check_base_model(session, task, model)
            check_fits_context(model, task, dataset.examples, positions)
        sources.append({"task_id": task.id, "task_name": task.name, "dataset_id": dataset.id})
    distinct = {source["task_id"] for source in sources}
    if len(distinct) < MIN_META_TASKS:
        raise InvalidInput(
            f"meta-learning needs at least {MIN_META_TASKS} different tasks; got {len(distinct)}",
            code="too_few_tasks",
        )
    return _queue(
        session,
        job_type="meta_init",
        task=None,
        dataset_id=None,
        validation_dataset_id=None,
        hyperparameters=stored,
        options={"name": name, "tasks": sources},
        priority=priority,
        max_attempts=max_attempts,
        steps=meta.outer_steps,
        message=f"meta_init job ({config.method}, {meta.order} order) queued over {len(distinct)} tasks",
    )


def _check_base_model(session: Session, task: Task, model: FrozenModel) -> None:
    """Refuse a task whose prompts were trained on another base model: its data was set up for that model."""
    active = PromptRepository(session).get(task.active_prompt_id) if task.active_prompt_id is not None else None
    if active is not None and active.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"task {task.name!r} serves prompts of base model {active.base_model_name!r}, not {model.identity.name!r}; "
            "meta-learn from tasks of the model this service runs",
            code="base_model_mismatch",
        )

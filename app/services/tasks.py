"""Task use cases: create, find by id or name, list with status, delete."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import MAX_ID
from app.db.models import Task
from app.db.repositories import TaskRepository
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec
from app.errors import Conflict, InvalidInput, NotFound
from app.services import audit, ensembles, traffic
from app.services.datasets import check_labels, get_dataset, require_labeled
from app.text_checks import text_problem

if TYPE_CHECKING:  # a caller hands in its runtime; workers importing this file load no serving code
    from app.engine.serving.runtime import ModelRuntime

PLACEHOLDER = "{input}"
MAX_LABEL_CHARS = 100


def task_spec(task: Task) -> TaskSpec:
    """The engine's view of a task (no database objects cross into the engine)."""
    return TaskSpec(kind=task.kind, template=task.template, labels=tuple(task.labels))  # type: ignore[arg-type]


def resolve_task(session: Session, ref: str | int) -> Task:
    """A task by its id or its unique name, or NotFound."""
    repo = TaskRepository(session)
    text = str(ref).strip()
    if text.isascii() and text.isdigit():  # "²".isdigit() is true too, and int() refuses it
        task = repo.get(int(text)) if int(text) <= MAX_ID else None
    else:
        # A name no task can have (NUL, lone surrogates) is not looked up: PostgreSQL refuses NUL in a query.
        task = repo.get_by_name(text) if text_problem(text) is None else None
    if task is None:
        raise NotFound(f"no task with id or name {text!r}; GET /v1/tasks lists them", code="task_not_found")
    return task


def _validate_labels(kind: str, labels: list[str]) -> list[str]:
    if kind == "generation":
        if labels:
            raise InvalidInput('a generation task takes no labels; remove "labels"', code="labels_not_allowed")
        return []
    cleaned = [label.strip() for label in labels]
    if len(cleaned) < 2:
        raise InvalidInput("a classification task needs at least two labels", code="labels_required")
    for index, label in enumerate(cleaned):
        if not label or len(label) > MAX_LABEL_CHARS:
            raise InvalidInput(
                f"labels[{index}] must be 1 to {MAX_LABEL_CHARS} characters (leading/trailing spaces are dropped)",
                code="invalid_label",
            )
    duplicates = sorted(label for label, count in Counter(cleaned).items() if count > 1)  # linear: labels may be many
    if duplicates:
        raise InvalidInput(f"labels must be distinct; repeated: {', '.join(duplicates)}", code="duplicate_labels")
    return cleaned


def _validate_template(kind: str, template: str | None) -> str:
    if template is None:
        return DEFAULT_TEMPLATES[kind]
    if PLACEHOLDER not in template:
        raise InvalidInput('template must contain the placeholder "{input}"', code="invalid_template")
    return template


def create_task(
    session: Session, *, name: str, kind: str, labels: list[str], template: str | None, evaluation_holdout: bool = True
) -> Task:
    """Validate and store a new untrained task."""
    # Checked before the first query, so no work runs inside a transaction.
    labels, template = _validate_labels(kind, labels), _validate_template(kind, template)
    repo = TaskRepository(session)
    if repo.get_by_name(name) is not None:
        raise Conflict(f"a task named {name!r} already exists; pick another name", code="task_name_taken")
    task = Task(name=name, kind=kind, labels=labels, template=template, evaluation_holdout=evaluation_holdout)
    try:
        with session.begin_nested():
            repo.add(task)
    except IntegrityError:  # a concurrent request took the name between our check and the insert
        raise Conflict(f"a task named {name!r} already exists; pick another name", code="task_name_taken") from None
    return task


def task_statuses(session: Session, tasks: Sequence[Task]) -> dict[int, str]:
    """untrained / training (a queued or running job) / ready (an active prompt), per task id."""
    training = TaskRepository(session).with_active_jobs([task.id for task in tasks])
    statuses: dict[int, str] = {}
    for task in tasks:
        if task.id in training:
            statuses[task.id] = "training"
        elif task.active_prompt_id is not None:
            statuses[task.id] = "ready"
        else:
            statuses[task.id] = "untrained"
    return statuses


def list_tasks(session: Session, *, limit: int, offset: int) -> Sequence[Task]:
    return TaskRepository(session).list(limit=limit, offset=offset)


def update_task(session: Session, task: Task, changes: dict[str, Any]) -> None:
    """Apply a PATCH: `ensemble` (default ensemble, or None) and `traffic` (a split between versions, or None);
    `evaluation_dataset_id` and `evaluation_holdout` (app/services/holdout.py); only the keys given change. A task
    serves one of the ensemble and the traffic split at most."""
    if "ensemble" in changes:
        set_ensemble(session, task, changes["ensemble"])
    if "traffic" in changes:
        task.traffic = None if changes["traffic"] is None else traffic.validate(session, task, changes["traffic"])
    if "evaluation_dataset_id" in changes:
        dataset_id = changes["evaluation_dataset_id"]
        if dataset_id is not None:
            dataset = get_dataset(session, dataset_id, with_examples=True)
            require_labeled(dataset, "to score versions on")
            if task.kind == "classification":
                check_labels(dataset, task.labels)
        task.evaluation_dataset_id = dataset_id
        if dataset_id is None:  # "no evaluation set" means none held out either, unless the PATCH says otherwise
            task.evaluation_holdout = False
    if "evaluation_holdout" in changes:
        task.evaluation_holdout = changes["evaluation_holdout"]
    if task.ensemble is not None and task.traffic:
        raise InvalidInput(
            "a task serves a default ensemble or a traffic split, not both; set the other to null",
            code="traffic_invalid",
        )
    session.flush()


def set_ensemble(session: Session, task: Task, ensemble: list[int] | dict[str, int] | None) -> None:
    """Serve an ensemble of the task's versions by default (classification), or its active version (None)."""
    if ensemble is not None:
        if task.kind != "classification":
            raise InvalidInput(
                "ensembles average label probabilities: only classification tasks take one", code="ensemble_invalid"
            )
        ensembles.members(session, task, ensembles.validate_spec(ensemble), strict=isinstance(ensemble, list))
    task.ensemble = ensemble
    session.flush()


def delete_task(session: Session, task: Task, runtime: ModelRuntime) -> None:
    """Delete a task with its prompts, jobs and events; a worker running one of its jobs stops at its next beat."""
    prompt_ids = [prompt.id for prompt in task.prompts]
    task_id, name = task.id, task.name
    TaskRepository(session).delete(task)
    audit.record(session, "delete", "task", task_id, {"name": name, "prompts": prompt_ids})
    for prompt_id in prompt_ids:
        runtime.discard_prompt(prompt_id)

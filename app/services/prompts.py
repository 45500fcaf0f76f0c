"""Prompt versions: list, inspect, delete (with fallback of the active version), activate, store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.models import Prompt, PromptKind, Task
from app.db.repositories import PromptRepository, TaskRepository
from app.engine.core.model import ModelIdentity
from app.engine.formats.artifact import Artifact
from app.errors import Conflict, NotFound
from app.services import audit, quotas
from app.services.keys import Limits

if TYPE_CHECKING:  # a caller hands in its runtime; workers importing this file load no serving code
    from app.engine.serving.runtime import ModelRuntime


def get_prompt(session: Session, prompt_id: int, *, with_tensors: bool = False) -> Prompt:
    prompt = PromptRepository(session).get(prompt_id, with_tensors=with_tensors)
    if prompt is None:
        raise NotFound(f"no prompt with id {prompt_id}; GET /v1/prompts lists them", code="prompt_not_found")
    return prompt


def list_prompts(
    session: Session, *, task: Task | None, limit: int, offset: int, kind: PromptKind | None = None
) -> Sequence[Prompt]:
    return PromptRepository(session).list(
        task_id=task.id if task else None, limit=limit, offset=offset, kind=kind.value if kind else None
    )


def active_ids(session: Session, prompts: Sequence[Prompt]) -> set[int]:
    """Which of these prompts are their task's active version (a meta-initialisation never is)."""
    repo = TaskRepository(session)
    tasks = {p.task_id: repo.get(p.task_id) for p in prompts if p.task_id is not None}
    return {
        p.id
        for p in prompts
        if p.task_id is not None and (t := tasks[p.task_id]) is not None and t.active_prompt_id == p.id
    }


def delete_prompt(session: Session, prompt_id: int, runtime: ModelRuntime) -> None:
    """Delete a version; if it was active, the task falls back to its latest remaining version (or untrained)."""
    repo = PromptRepository(session)
    prompt = get_prompt(session, prompt_id)
    task = TaskRepository(session).get(prompt.task_id) if prompt.task_id is not None else None
    if task is not None and task.active_prompt_id == prompt.id:
        previous = repo.latest_for_task(task.id, excluding=prompt.id)
        task.active_prompt_id = previous.id if previous else None
    repo.delete(prompt)
    audit.record(
        session,
        "delete",
        "prompt",
        prompt_id,
        {"task": prompt.task_id, "version": prompt.version, "active_now": task.active_prompt_id if task else None},
    )
    runtime.discard_prompt(prompt_id)


def activate_prompt(session: Session, prompt_id: int) -> Prompt:
    """Make a stored version its task's active prompt (a rollback or roll-forward)."""
    prompt = get_prompt(session, prompt_id)
    if prompt.task_id is None:
        raise Conflict(
            f"prompt {prompt_id} is a meta-initialisation and belongs to no task; start a train job from it with "
            f'"init": {{"from_prompt": {prompt_id}}}',
            code="prompt_not_activatable",
        )
    task = TaskRepository(session).get(prompt.task_id)
    assert task is not None  # prompts are deleted with their task
    previous = task.active_prompt_id
    task.active_prompt_id = prompt.id
    session.flush()
    audit.record(session, "activate", "prompt", prompt.id, {"task": task.id, "previous": previous})
    return prompt


def store_prompt(
    session: Session,
    *,
    tenant: str,
    task_id: int | None,
    artifact: Artifact,
    positions: int,
    width: int,
    identity: ModelIdentity,
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    job_id: int | None,
    dataset_id: int | None,
    lineage: dict[str, Any] | None = None,
    name: str | None = None,
    limits: Limits | None = None,
    activate: bool = True,
) -> Prompt:
    """Store a trained prompt as the task's next version and make it active; with no task, store it as a
    meta-initialisation. With `limits`, refuse (429) what would pass the tenant's storage quota."""
    tensors = artifact.to_bytes({"base_model": identity.fingerprint, "base_model_name": identity.name})
    if limits is not None:
        quotas.check_storage(session, limits, adding=len(tensors))
    prompt = PromptRepository(session).add_version(
        Prompt(
            tenant=tenant,
            task_id=task_id,
            method=artifact.method,
            positions=positions,
            width=width,
            base_model_name=identity.name,
            base_model_fingerprint=identity.fingerprint,
            tensors=tensors,
            size_bytes=len(tensors),
            shapes=artifact.shapes,
            metrics=metrics,
            hyperparameters=hyperparameters,
            job_id=job_id,
            dataset_id=dataset_id,
            kind=PromptKind.task if task_id is not None else PromptKind.meta_init,
            name=name,
            lineage=lineage,
        )
    )
    task = TaskRepository(session).get(task_id) if task_id is not None and activate else None
    if task is not None:
        task.active_prompt_id = prompt.id
    session.flush()
    return prompt

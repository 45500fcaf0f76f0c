"""Which stored prompt versions serve a request, and how those the engine's pool lacks are read for it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Prompt, Task
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments
from app.errors import Conflict, InvalidInput, NotFound
from app.services import ensembles, traffic
from app.services.prompts import get_prompt


class Stale(Exception):
    """A prompt the request chose was deleted before it was served (the task was deleted, or fell back to an
    older version): the request is served again from a fresh read of its task."""


def check_base_model(prompt: Prompt, model: FrozenModel) -> Prompt:
    """The prompt, if it was trained on the model this process serves; Conflict base_model_mismatch otherwise."""
    if prompt.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"prompt {prompt.id} was trained on base model {prompt.base_model_name!r} "
            f"({prompt.base_model_fingerprint[:12]}), but this service runs {model.identity.name!r} "
            f"({model.identity.fingerprint[:12]}); retrain the task on this model",
            code="base_model_mismatch",
        )
    return prompt


def active_prompt(session: Session, task: Task, model: FrozenModel) -> Prompt:
    """The task's active version (its tensors not read)."""
    # Read on every request: a new active version or a deleted prompt is seen by the very next request, on
    # every replica sharing the database (the pool is keyed by immutable prompt ids, so it is never stale).
    if task.active_prompt_id is None:
        raise Conflict(
            f"task {task.name!r} has no trained prompt yet; POST /v1/jobs to train one", code="task_not_trained"
        )
    try:
        prompt = get_prompt(session, task.active_prompt_id)
    except NotFound:  # deleted between reading the task and the prompt: the task may have fallen back
        raise Stale() from None
    return check_base_model(prompt, model)


def serving_prompts(
    session: Session, task: Task, model: FrozenModel, ensemble: Any, user: str | None = None
) -> tuple[list[Prompt], bool]:
    """The versions that serve a request, and whether they form an ensemble (asked for, or the task's default);
    under a traffic split, the version the split gives this request (the same one for the same `user`)."""
    if ensemble is not None:
        if task.kind != "classification":
            raise InvalidInput(
                "ensembles average label probabilities: only classification tasks take one", code="ensemble_invalid"
            )
        chosen = ensembles.members(session, task, ensembles.validate_spec(ensemble))
        return [check_base_model(prompt, model) for prompt in chosen], True
    if task.ensemble is not None:
        chosen = ensembles.members(session, task, task.ensemble, strict=False)
        if chosen:
            return [check_base_model(prompt, model) for prompt in chosen], True
    chosen_id = traffic.pick(task, user)
    if chosen_id is not None:
        try:
            return [check_base_model(get_prompt(session, chosen_id), model)], False
        except NotFound:  # a version of the split was deleted: its share falls to the active version
            pass
    return [active_prompt(session, task, model)], False


def read_segments(session: Session, model: FrozenModel, prompt_ids: Iterable[int]) -> dict[int, Segments]:
    """How each of these versions enters a pass, from its stored artifact: what a request hands the engine for the
    versions its pool lacks, each read once.

    Ends the request's read transaction first and reads in one of its own, closed before returning: the request's
    snapshot may predate a delete, and a version deleted since the request chose it must never be served (Stale:
    the request is served again from its task); and no connection is held while the request queues.
    Unreadable: Conflict prompt_corrupt.
    """
    session.close()
    found: dict[int, Segments] = {}
    try:
        for prompt_id in sorted(set(prompt_ids)):
            try:
                data = get_prompt(session, prompt_id, with_tensors=True).tensors
            except NotFound:
                raise Stale() from None
            try:
                found[prompt_id] = load_segments(model, Artifact.from_bytes(data))
            except ValueError as exc:
                raise Conflict(f"prompt {prompt_id} is unreadable: {exc}", code="prompt_corrupt") from exc
    finally:
        session.close()
    return found

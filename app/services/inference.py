"""Inference use case: look up each task's active prompt version, queue the rows, wait for the batcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Prompt, Task
from app.engine.artifact import Artifact
from app.engine.batcher import BatcherClosed, QueueFull, QueueTimeout
from app.engine.methods import load_segments
from app.engine.mixed import Row
from app.engine.model import FrozenModel
from app.engine.pool import PromptMissing
from app.engine.runtime import ModelNotReady, ModelRuntime
from app.engine.segments import Segments
from app.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from app.services.context_length import first_overflow
from app.services.prompts import get_prompt
from app.services.tasks import task_spec


@dataclass(frozen=True)
class InferResult:
    task: Task
    prompt_id: int
    outputs: list[dict[str, Any]]


def make_prompt_loader(
    sessions: sessionmaker[Session], get_model: Callable[[], FrozenModel]
) -> Callable[[int], Segments]:
    """What a request calls for a prompt the pool lacks (on its own thread): the stored version's segments."""

    def load(prompt_id: int) -> Segments:
        with sessions() as session:
            data = get_prompt(session, prompt_id, with_tensors=True).tensors
        try:
            return load_segments(get_model(), Artifact.from_bytes(data))
        except ValueError as exc:
            raise Conflict(f"prompt {prompt_id} is unreadable: {exc}", code="prompt_corrupt") from exc

    return load


def _active_prompt(session: Session, task: Task, model: FrozenModel) -> Prompt:
    # Read on every request: a new active version or a deleted prompt is seen by the very next request, on
    # every replica sharing the database (the pool is keyed by immutable prompt ids, so it is never stale).
    if task.active_prompt_id is None:
        raise Conflict(
            f"task {task.name!r} has no trained prompt yet; POST /v1/jobs to train one", code="task_not_trained"
        )
    try:
        prompt = get_prompt(session, task.active_prompt_id)
    except NotFound:  # deleted between reading the task and the prompt
        raise Conflict(f"task {task.name!r} has no trained prompt right now; retry", code="task_not_trained") from None
    if prompt.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"prompt {prompt.id} was trained on base model {prompt.base_model_name!r} "
            f"({prompt.base_model_fingerprint[:12]}), but this service runs {model.identity.name!r} "
            f"({model.identity.fingerprint[:12]}); retrain the task on this model",
            code="base_model_mismatch",
        )
    return prompt


def _check_lengths(model: FrozenModel, task: Task, inputs: list[str], virtual_tokens: int, reserve: int) -> None:
    longest_label = max((len(model.encode(" " + label)) for label in task.labels), default=0)
    overflow = first_overflow(
        model, task, ((text, None) for text in inputs), virtual_tokens, max(reserve, longest_label)
    )
    if overflow is not None:
        index, needed = overflow
        raise InvalidInput(
            f"inputs[{index}] needs {needed} tokens with the prompt and output, more than the model's context "
            f"of {model.max_positions}; shorten it",
            code="input_too_long",
            details={"index": index, "tokens": needed, "context": model.max_positions},
        )


def infer(
    session: Session,
    runtime: ModelRuntime,
    task: Task,
    inputs: list[str],
    *,
    max_new_tokens: int,
    stop: list[str],
    priority: int = 0,
    timeout: float | None = None,
) -> InferResult:
    """Classify or generate for every input with the task's active prompt, batched with other requests."""
    try:
        model = runtime.wait(timeout=0)
    except ModelNotReady as exc:
        raise ServiceUnavailable(str(exc), code="model_unavailable") from exc
    prompt = _active_prompt(session, task, model)
    spec = task_spec(task)
    reserve = max_new_tokens if task.kind == "generation" else 0
    _check_lengths(model, task, inputs, prompt.num_virtual_tokens, reserve)
    session.close()  # nothing more to read: do not hold a connection while queued behind other requests
    rows = [Row(prompt.id, spec, text, max_new_tokens=max_new_tokens, stop=tuple(stop)) for text in inputs]
    try:
        results = runtime.run(rows, priority=priority, timeout=timeout)
    except PromptMissing as exc:
        raise ServiceUnavailable(f"{exc}: the prompt pool is thrashing; retry shortly", code="overloaded") from exc
    except QueueFull as exc:
        raise ServiceUnavailable(f"the server is overloaded ({exc}); retry shortly", code="overloaded") from exc
    except QueueTimeout as exc:
        raise ServiceUnavailable(f"{exc}; retry, or raise timeout_ms", code="queue_timeout") from exc
    except BatcherClosed as exc:
        raise ServiceUnavailable(str(exc), code="shutting_down") from exc
    if task.kind == "classification":
        outputs = [{"label": max(scores, key=scores.__getitem__), "scores": scores} for scores in results]
    else:
        outputs = [{"text": text} for text in results]
    return InferResult(task=task, prompt_id=prompt.id, outputs=outputs)

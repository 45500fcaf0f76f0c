"""Inference use case: look up each task's active prompt version, queue the rows, wait for the batcher."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Prompt, Task
from app.db.repositories import TaskRepository
from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.core.text import encode_example
from app.engine.formats.artifact import Artifact
from app.engine.methods import get_method, load_segments
from app.engine.serving.batcher import BatcherClosed, QueueFull, QueueTimeout, RequestCancelled
from app.engine.serving.pool import PromptMissing
from app.engine.serving.runtime import ModelNotReady, ModelRuntime
from app.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from app.services import ensembles
from app.services.context_length import first_too_long
from app.services.prompts import get_prompt
from app.services.tasks import task_spec


@dataclass(frozen=True)
class Budget:
    """What one request may take: its deadline (time.monotonic(), counted from its arrival), a cancel event (set
    when its client goes away), and caps on its work."""

    deadline: float | None = None
    cancel: threading.Event | None = None
    max_input_chars: int = 0  # 0: no cap
    max_tokens: int = 0  # positions computed for the request: prompt + input + new tokens, per row; 0: no cap


@dataclass(frozen=True)
class InferResult:
    task: Task
    prompt_id: int
    outputs: list[Any]
    ensemble: list[int] | None = None
    input_tokens: list[int] | None = None  # each input's rendered token count (the prompt's virtual tokens aside)


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


def _check_base_model(prompt: Prompt, model: FrozenModel) -> Prompt:
    if prompt.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"prompt {prompt.id} was trained on base model {prompt.base_model_name!r} "
            f"({prompt.base_model_fingerprint[:12]}), but this service runs {model.identity.name!r} "
            f"({model.identity.fingerprint[:12]}); retrain the task on this model",
            code="base_model_mismatch",
        )
    return prompt


def _active_prompt(session: Session, task: Task, model: FrozenModel) -> Prompt:
    # Read on every request: a new active version or a deleted prompt is seen by the very next request, on
    # every replica sharing the database (the pool is keyed by immutable prompt ids, so it is never stale).
    if task.active_prompt_id is None:
        raise Conflict(
            f"task {task.name!r} has no trained prompt yet; POST /v1/jobs to train one", code="task_not_trained"
        )
    try:
        prompt = get_prompt(session, task.active_prompt_id)
    except NotFound:  # deleted between reading the task and the prompt: the task may have fallen back
        raise _Stale() from None
    return _check_base_model(prompt, model)


def _serving_prompts(session: Session, task: Task, model: FrozenModel, ensemble: Any) -> tuple[list[Prompt], bool]:
    """The versions that serve a request, and whether they form an ensemble (asked for, or the task's default)."""
    if ensemble is not None:
        if task.kind != "classification":
            raise InvalidInput(
                "ensembles average label probabilities: only classification tasks take one", code="ensemble_invalid"
            )
        chosen = ensembles.members(session, task, ensembles.validate_spec(ensemble))
        return [_check_base_model(prompt, model) for prompt in chosen], True
    if task.ensemble is not None:
        chosen = ensembles.members(session, task, task.ensemble, strict=False)
        if chosen:
            return [_check_base_model(prompt, model) for prompt in chosen], True
    return [_active_prompt(session, task, model)], False


def check_input_lengths(inputs: list[str], max_chars: int) -> None:
    """Refuse an input longer than max_chars characters before any tokenising (tokenising costs with length)."""
    if not max_chars:
        return
    index = next((i for i, text in enumerate(inputs) if len(text) > max_chars), None)
    if index is not None:
        raise InvalidInput(
            f"inputs[{index}] is {len(inputs[index])} characters; at most {max_chars} are accepted "
            "(PROMPTBANK_MAX_INPUT_CHARS); shorten it",
            code="input_too_long",
            details={"index": index, "characters": len(inputs[index]), "limit": max_chars},
        )


def _check_work(ids: list[tuple[int, ...]], prompts: list[Prompt], reserve: int, limit: int) -> None:
    """Refuse a request whose rows would compute more positions than `limit` in all."""
    if not limit:
        return
    virtual = max(p.num_virtual_tokens for p in prompts)
    work = sum(len(row) + virtual + reserve for row in ids) * len(prompts)
    if work > limit:
        raise InvalidInput(
            f"this request asks for {work} token positions (inputs x (prompt + input + new tokens) x ensemble "
            f"members); at most {limit} are served per request (PROMPTBANK_MAX_REQUEST_TOKENS): split it, or ask "
            "for fewer new tokens",
            code="request_too_large",
            details={"tokens": work, "limit": limit},
        )


def _encode_checked(
    model: FrozenModel, task: Task, inputs: list[str], prompts: list[Prompt], reserve: int
) -> list[tuple[int, ...]]:
    """Each input's token ids (the one tokenisation of a request), refusing one past the context, or one that
    renders to nothing for a prompt that has no state of its own to predict from."""
    spec = task_spec(task)
    ids = [tuple(encode_example(model, spec, text, None).input_ids) for text in inputs]
    empty = next((index for index, row in enumerate(ids) if not row), None)
    needy = next((p for p in prompts if get_method(p.method).needs_input), None)
    if empty is not None and needy is not None:
        raise InvalidInput(
            f"inputs[{empty}] renders to no tokens with template {task.template!r}, and a {needy.method} prompt "
            "needs at least one; give some text",
            code="input_empty",
        )
    virtual_tokens = max(p.num_virtual_tokens for p in prompts)
    longest_label = max((len(model.encode(" " + label)) for label in task.labels), default=0)
    overflow = first_too_long(model, map(len, ids), virtual_tokens, max(reserve, longest_label))
    if overflow is not None:
        index, needed = overflow
        raise InvalidInput(
            f"inputs[{index}] needs {needed} tokens with the prompt and output, more than the model's context "
            f"of {model.max_positions}; shorten it",
            code="input_too_long",
            details={"index": index, "tokens": needed, "context": model.max_positions},
        )
    return ids


def _model(runtime: ModelRuntime) -> FrozenModel:
    try:
        return runtime.wait(timeout=0)
    except ModelNotReady as exc:
        raise ServiceUnavailable(str(exc), code="model_unavailable") from exc


def _left(budget: Budget) -> float | None:
    """Seconds left before the request's deadline; a 503 at once when none are."""
    if budget.deadline is None:
        return None
    left = budget.deadline - time.monotonic()
    if left <= 0:
        raise ServiceUnavailable("the request's timeout passed before it could be served; retry", code="queue_timeout")
    return left


class _Stale(Exception):
    """A prompt the request chose was deleted before it was served (the task was deleted, or fell back to an
    older version): the request is served again from a fresh read of its task."""


def _fresh(session: Session, task: Task) -> Task:
    """The task read again after a _Stale: deleted meanwhile is a 404 like any unknown task."""
    task_id, name = task.id, task.name
    # A new read transaction (a snapshot taken now), and no loaded row kept: both may hold the old version.
    session.rollback()
    fresh = TaskRepository(session).get(task_id)
    if fresh is None:
        raise NotFound(f"task {name!r} was deleted; GET /v1/tasks lists them", code="task_not_found")
    return fresh


def _retrying(session: Session, task: Task, serve: Callable[[Task], InferResult]) -> InferResult:
    name = task.name
    try:
        return serve(task)
    except _Stale:
        pass
    try:
        return serve(_fresh(session, task))
    except _Stale:
        raise Conflict(
            f"task {name!r} changed its prompt twice while this request was served; retry",
            code="task_not_trained",
        ) from None


def _run(runtime: ModelRuntime, rows: list[Row], priority: int, budget: Budget) -> list[Any]:
    """Queue rows with other requests' and wait; engine refusals become 503s."""
    try:
        return runtime.run(rows, priority=priority, timeout=_left(budget), cancel=budget.cancel)
    except NotFound as exc:  # the pool read a prompt deleted since the request chose it
        if exc.code == "prompt_not_found":
            raise _Stale() from exc
        raise
    except PromptMissing as exc:
        raise ServiceUnavailable(f"{exc}: the prompt pool is thrashing; retry shortly", code="overloaded") from exc
    except QueueFull as exc:
        raise ServiceUnavailable(f"the server is overloaded ({exc}); retry shortly", code="overloaded") from exc
    except QueueTimeout as exc:
        raise ServiceUnavailable(f"{exc}; retry, or raise timeout_ms", code="queue_timeout") from exc
    except BatcherClosed as exc:
        raise ServiceUnavailable(str(exc), code="shutting_down") from exc
    except RequestCancelled as exc:  # nobody reads this answer: the client is gone
        raise ServiceUnavailable(str(exc), code="cancelled") from exc


def infer(
    session: Session,
    runtime: ModelRuntime,
    task: Task,
    inputs: list[str],
    *,
    max_new_tokens: int,
    stop: list[str],
    priority: int = 0,
    budget: Budget | None = None,
    ensemble: Any = None,
    on_progress: Callable[[int, str, int], None] | None = None,
) -> InferResult:
    """Classify or generate for every input with the task's active prompt (or an ensemble of its versions, whose
    rows share the same batches), batched with other requests.

    on_progress(input index, text so far, tokens generated) is called on the engine thread after every generated
    token of a generation task (for streaming); it must only hand its arguments over."""
    budget = budget or Budget()
    check_input_lengths(inputs, budget.max_input_chars)
    model = _model(runtime)

    def serve(task: Task) -> InferResult:
        return _infer(
            session, runtime, model, task, inputs, max_new_tokens, stop, priority, budget, ensemble, on_progress
        )

    return _retrying(session, task, serve)


def _infer(
    session: Session,
    runtime: ModelRuntime,
    model: FrozenModel,
    task: Task,
    inputs: list[str],
    max_new_tokens: int,
    stop: list[str],
    priority: int,
    budget: Budget,
    ensemble: Any,
    on_progress: Callable[[int, str, int], None] | None,
) -> InferResult:
    prompts, is_ensemble = _serving_prompts(session, task, model, ensemble)
    spec = task_spec(task)
    reserve = max_new_tokens if task.kind == "generation" else 0
    ids = _encode_checked(model, task, inputs, prompts, reserve)
    _check_work(ids, prompts, reserve, budget.max_tokens)
    _left(budget)
    session.close()  # nothing more to read: do not hold a connection while queued behind other requests
    rows = [
        Row(
            prompt.id,
            spec,
            text,
            max_new_tokens=max_new_tokens,
            stop=tuple(stop),
            input_ids=row_ids,
            cancel=budget.cancel,
            on_progress=None if on_progress is None else partial(on_progress, index),
        )
        for prompt in prompts
        for index, (text, row_ids) in enumerate(zip(inputs, ids, strict=True))
    ]
    results = _run(runtime, rows, priority, budget)
    if task.kind == "classification":
        per_member = [results[i * len(inputs) : (i + 1) * len(inputs)] for i in range(len(prompts))]
        scored = ensembles.average(per_member) if len(prompts) > 1 else per_member[0]
        outputs = [{"label": max(scores, key=scores.__getitem__), "scores": scores} for scores in scored]
    else:
        outputs = [{"text": text} for text in results]
    members = [p.id for p in prompts] if is_ensemble else None
    return InferResult(
        task=task, prompt_id=prompts[0].id, outputs=outputs, ensemble=members, input_tokens=[len(row) for row in ids]
    )


def embed(
    session: Session,
    runtime: ModelRuntime,
    task: Task,
    inputs: list[str],
    *,
    pooling: Literal["last", "mean"],
    priority: int = 0,
    budget: Budget | None = None,
) -> InferResult:
    """One vector per input: the frozen model's final hidden state under the task's active prompt (the last
    position's, or the mean over the input's positions), batched by the same engine as inference."""
    budget = budget or Budget()
    check_input_lengths(inputs, budget.max_input_chars)
    model = _model(runtime)
    return _retrying(
        session, task, lambda task: _embed(session, runtime, model, task, inputs, pooling, priority, budget)
    )


def _embed(
    session: Session,
    runtime: ModelRuntime,
    model: FrozenModel,
    task: Task,
    inputs: list[str],
    pooling: Literal["last", "mean"],
    priority: int,
    budget: Budget,
) -> InferResult:
    prompt = _active_prompt(session, task, model)
    ids = _encode_checked(model, task, inputs, [prompt], 0)
    _check_work(ids, [prompt], 0, budget.max_tokens)
    _left(budget)
    session.close()
    spec = task_spec(task)
    rows = [
        Row(prompt.id, spec, text, input_ids=row_ids, pooling=pooling, cancel=budget.cancel)
        for text, row_ids in zip(inputs, ids, strict=True)
    ]
    vectors = _run(runtime, rows, priority, budget)
    return InferResult(task=task, prompt_id=prompt.id, outputs=vectors)

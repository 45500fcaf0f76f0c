"""Inference use case: choose each task's serving prompt versions, hand the engine the ones its pool lacks with
the rows, and wait for the batcher; a prompt evicted before its round is read again and the rows resubmitted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.db.models import Prompt, Task
from app.db.repositories import TaskRepository
from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.serving.batcher import BatcherClosed, QueueFull, QueueTimeout, RequestCancelled
from app.engine.serving.pool import PromptMissing
from app.engine.serving.runtime import ModelNotReady, ModelRuntime
from app.errors import Conflict, NotFound, ServiceUnavailable
from app.services import ensembles
from app.services.request_checks import check_input_lengths, check_work, encode_checked
from app.services.serving_prompts import Stale, active_prompt, read_segments, serving_prompts
from app.services.tasks import task_spec

__all__ = ["RequestBudget", "InferResult", "check_input_lengths", "embed", "infer"]

TRIES = 3  # submissions of one request whose prompts the pool keeps evicting, before it is refused as overloaded


@dataclass(frozen=True)
class RequestBudget:
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


def _model(runtime: ModelRuntime) -> FrozenModel:
    try:
        return runtime.wait(timeout=0)
    except ModelNotReady as exc:
        raise ServiceUnavailable(str(exc), code="model_unavailable") from exc


def _left(budget: RequestBudget) -> float | None:
    """Seconds left before the request's deadline; a 503 at once when none are."""
    if budget.deadline is None:
        return None
    left = budget.deadline - time.monotonic()
    if left <= 0:
        raise ServiceUnavailable("the request's timeout passed before it could be served; retry", code="queue_timeout")
    return left


def _fresh(session: Session, task: Task) -> Task:
    """The task read again after a Stale: deleted meanwhile is a 404 like any unknown task."""
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
    except Stale:
        pass
    try:
        return serve(_fresh(session, task))
    except Stale:
        raise Conflict(
            f"task {name!r} changed its prompt twice while this request was served; retry",
            code="task_not_trained",
        ) from None


def _run(
    session: Session,
    runtime: ModelRuntime,
    model: FrozenModel,
    prompts: list[Prompt],
    rows: list[Row],
    priority: int,
    budget: RequestBudget,
) -> list[Any]:
    """Queue rows with other requests' and wait; engine refusals become 503s.

    The engine reads nothing: the versions its pool lacks are read here (read_segments, once each; it also ends
    the request's database transaction) and go with the rows. One evicted between that check and the request's
    round comes back as PromptMissing: it is read again and the rows resubmitted, TRIES submissions in all.
    """
    given = read_segments(session, model, runtime.missing(p.id for p in prompts))
    for _ in range(TRIES):
        try:
            return runtime.run(rows, prompts=given, priority=priority, timeout=_left(budget), cancel=budget.cancel)
        except PromptMissing as exc:
            missing = exc
        except QueueFull as exc:
            raise ServiceUnavailable(f"the server is overloaded ({exc}); retry shortly", code="overloaded") from exc
        except QueueTimeout as exc:
            raise ServiceUnavailable(f"{exc}; retry, or raise timeout_ms", code="queue_timeout") from exc
        except BatcherClosed as exc:
            raise ServiceUnavailable(str(exc), code="shutting_down") from exc
        except RequestCancelled as exc:  # nobody reads this answer: the client is gone
            raise ServiceUnavailable(str(exc), code="cancelled") from exc
        given = {**given, **read_segments(session, model, missing.prompt_ids)}
    raise ServiceUnavailable(f"{missing}: the prompt pool is thrashing; retry shortly", code="overloaded") from missing


def infer(
    session: Session,
    runtime: ModelRuntime,
    task: Task,
    inputs: list[str],
    *,
    max_new_tokens: int,
    stop: list[str],
    priority: int = 0,
    budget: RequestBudget | None = None,
    ensemble: Any = None,
    on_progress: Callable[[int, str, int], None] | None = None,
    user: str | None = None,
) -> InferResult:
    """Classify or generate for every input with the task's active prompt (or an ensemble of its versions, whose
    rows share the same batches), batched with other requests.

    on_progress(input index, text so far, tokens generated) is called on the engine thread after every generated
    token of a generation task (for streaming); it must only hand its arguments over. user: who asks, so that
    under a traffic split the same user meets the same version."""
    budget = budget or RequestBudget()
    check_input_lengths(inputs, budget.max_input_chars)
    model = _model(runtime)

    def serve(task: Task) -> InferResult:
        return _infer(
            session, runtime, model, task, inputs, max_new_tokens, stop, priority, budget, ensemble, on_progress, user
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
    budget: RequestBudget,
    ensemble: Any,
    on_progress: Callable[[int, str, int], None] | None,
    user: str | None,
) -> InferResult:
    prompts, is_ensemble = serving_prompts(session, task, model, ensemble, user)
    spec = task_spec(task)
    reserve = max_new_tokens if task.kind == "generation" else 0
    ids = encode_checked(model, task, inputs, prompts, reserve)
    check_work(ids, prompts, reserve, budget.max_tokens)
    _left(budget)
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
    results = _run(session, runtime, model, prompts, rows, priority, budget)
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
    budget: RequestBudget | None = None,
) -> InferResult:
    """One vector per input: the frozen model's final hidden state under the task's active prompt (the last
    position's, or the mean over the input's positions), batched by the same engine as inference."""
    budget = budget or RequestBudget()
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
    budget: RequestBudget,
) -> InferResult:
    prompt = active_prompt(session, task, model)
    ids = encode_checked(model, task, inputs, [prompt], 0)
    check_work(ids, [prompt], 0, budget.max_tokens)
    _left(budget)
    spec = task_spec(task)
    rows = [
        Row(prompt.id, spec, text, input_ids=row_ids, pooling=pooling, cancel=budget.cancel)
        for text, row_ids in zip(inputs, ids, strict=True)
    ]
    vectors = _run(session, runtime, model, [prompt], rows, priority, budget)
    return InferResult(task=task, prompt_id=prompt.id, outputs=vectors)

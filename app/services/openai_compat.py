"""OpenAI-style completions on the mixed-task engine: a model is a task, an answer is a list of choices.

Generation tasks answer with their generated text; classification tasks with the winning label as text and the
labels' log-probabilities. Everything is served by `inference.infer`, the same path as /v1/infer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.models import Task
from app.db.repositories import TaskRepository
from app.engine.core.text import label_token_ids
from app.engine.serving.runtime import ModelRuntime
from app.errors import InvalidInput
from app.services.inference import RequestBudget, infer
from app.services.tasks import resolve_task, task_spec


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop" (end of text, a stop string, a label) or "length" (max_tokens reached)
    tokens: int  # completion tokens
    label_logprobs: dict[str, float] | None = None  # classification: every label's log-probability, best first


@dataclass(frozen=True)
class Completion:
    task: Task
    prompt_id: int
    choices: list[Choice]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)


def ready_models(session: Session, *, limit: int = 1000) -> Sequence[Task]:
    """The tasks a completion can name: those with an active prompt version."""
    return TaskRepository(session).ready(limit=limit)


def complete(
    session: Session,
    runtime: ModelRuntime,
    model: str,
    inputs: list[str],
    *,
    max_tokens: int,
    stop: list[str],
    budget: RequestBudget,
    logprobs: bool = False,
    on_progress: Callable[[int, str, int], None] | None = None,
    user: str | None = None,
) -> Completion:
    """One choice per input from the task named by `model` (progress as in inference.infer)."""
    task = resolve_task(session, model)
    if logprobs and task.kind != "classification":
        raise InvalidInput(
            f"task {task.name!r} generates text greedily and gives no log-probabilities; they are given for "
            "classification tasks (over their labels): leave logprobs out",
            code="logprobs_unsupported",
        )
    generated = [0] * len(inputs)

    def progress(index: int, text: str, tokens: int) -> None:
        generated[index] = tokens
        if on_progress is not None:
            on_progress(index, text, tokens)

    result = infer(
        session,
        runtime,
        task,
        inputs,
        max_new_tokens=max_tokens,
        stop=stop,
        budget=budget,
        on_progress=progress,
        user=user,
    )
    choices: list[Choice] = []
    if task.kind == "classification":
        frozen = runtime.wait(timeout=0)
        spec = task_spec(task)
        # A label's tokens as the engine scores it (the template decides the leading space): one rule everywhere.
        label_tokens = dict(zip(spec.labels, map(len, label_token_ids(frozen, spec)), strict=True))
        for index, output in enumerate(result.outputs):
            ranked = sorted(output["scores"].items(), key=lambda item: -item[1])
            label_logprobs = {label: math.log(max(p, 1e-300)) for label, p in ranked}  # JSON has no -inf
            label = output["label"]
            choices.append(Choice(index, label, "stop", label_tokens[label], label_logprobs))
    else:
        for index, output in enumerate(result.outputs):
            reason = "length" if generated[index] >= max_tokens else "stop"
            choices.append(Choice(index, output["text"], reason, generated[index]))
    return Completion(task, result.prompt_id, choices, sum(result.input_tokens or []))

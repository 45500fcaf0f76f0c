"""Inference use case: run a task's active prompt on inputs through the engine thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.db.models import Prompt, Task
from app.engine.inference import classify, generate
from app.engine.model import FrozenModel
from app.engine.runtime import ModelNotReady, ModelRuntime
from app.engine.serialization import prompt_from_bytes
from app.engine.text import encode_example
from app.errors import AppError, Conflict, InvalidInput, ServiceUnavailable
from app.services.prompts import get_prompt
from app.services.tasks import task_spec


@dataclass(frozen=True)
class InferResult:
    task: Task
    prompt_id: int
    outputs: list[dict[str, Any]]


def _active_prompt(session: Session, task: Task, model: FrozenModel) -> tuple[Prompt, torch.Tensor]:
    if task.active_prompt_id is None:
        raise Conflict(
            f"task {task.name!r} has no trained prompt yet; POST /v1/jobs to train one", code="task_not_trained"
        )
    prompt = get_prompt(session, task.active_prompt_id, with_tensors=True)
    if prompt.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"prompt {prompt.id} was trained on base model {prompt.base_model_name!r} "
            f"({prompt.base_model_fingerprint[:12]}), but this service runs {model.identity.name!r} "
            f"({model.identity.fingerprint[:12]}); retrain the task on this model",
            code="base_model_mismatch",
        )
    try:
        tensor, _meta = prompt_from_bytes(prompt.tensors)
    except ValueError as exc:
        raise AppError(f"prompt {prompt.id} is unreadable: {exc}", code="prompt_corrupt") from exc
    return prompt, tensor


def _check_lengths(model: FrozenModel, task: Task, inputs: list[str], virtual_tokens: int, reserve: int) -> None:
    spec = task_spec(task)
    longest_label = max((len(model.encode(" " + label)) for label in task.labels), default=0)
    for index, text in enumerate(inputs):
        needed = virtual_tokens + len(encode_example(model, spec, text, None).input_ids) + max(reserve, longest_label)
        if needed > model.max_positions:
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
    batch_size: int,
) -> InferResult:
    """Classify or generate for every input with the task's active prompt."""
    try:
        model = runtime.wait(timeout=0)
    except ModelNotReady as exc:
        raise ServiceUnavailable(str(exc), code="model_unavailable") from exc
    prompt, tensor = _active_prompt(session, task, model)
    spec = task_spec(task)
    reserve = max_new_tokens if task.kind == "generation" else 0
    _check_lengths(model, task, inputs, prompt.num_virtual_tokens, reserve)
    outputs: list[dict[str, Any]]
    if task.kind == "classification":
        scores = runtime.run(classify, tensor, spec, inputs, batch_size=batch_size)
        outputs = [{"label": max(row, key=row.__getitem__), "scores": row} for row in scores]
    else:
        texts = runtime.run(
            generate, tensor, spec, inputs, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size
        )
        outputs = [{"text": text} for text in texts]
    return InferResult(task=task, prompt_id=prompt.id, outputs=outputs)

"""Ensembles: several stored versions of one task serve together and their label probabilities are averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Prompt, Task
from app.db.repositories import PromptRepository
from app.errors import Conflict, InvalidInput

MAX_MEMBERS = 16

# An ensemble as requests and tasks hold it: explicit prompt ids, or {"top": k} (the best k by validation).
EnsembleSpec = list[int] | dict[str, int]


def rank_key(prompt: Prompt) -> tuple[float, float, int]:
    """Best first: higher validation accuracy, then lower validation loss, then newer."""
    metrics = prompt.metrics or {}
    accuracy = metrics.get("best_val_accuracy")
    loss = metrics.get("best_val_loss")
    return (
        -(float(accuracy) if isinstance(accuracy, int | float) else float("-inf")),
        float(loss) if isinstance(loss, int | float) else float("inf"),
        -prompt.id,
    )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_spec(spec: Any) -> EnsembleSpec:
    """A well-formed ensemble spec, or InvalidInput saying what to fix."""
    if isinstance(spec, dict) and set(spec) == {"top"} and _whole(spec["top"]):
        if not 1 <= spec["top"] <= MAX_MEMBERS:
            raise InvalidInput(f'"top" must be between 1 and {MAX_MEMBERS}', code="ensemble_invalid")
        return {"top": spec["top"]}
    if isinstance(spec, list) and spec and all(_whole(i) for i in spec):
        if len(spec) > MAX_MEMBERS or len(set(spec)) != len(spec):
            raise InvalidInput(f"an ensemble is 1 to {MAX_MEMBERS} distinct prompt ids", code="ensemble_invalid")
        return list(spec)
    raise InvalidInput('an ensemble is a list of prompt ids or {"top": k}', code="ensemble_invalid")


def members(session: Session, task: Task, spec: EnsembleSpec, *, strict: bool = True) -> list[Prompt]:
    """The task's versions an ensemble names, best first for {"top": k}; a foreign or missing id is refused
    (strict) or skipped (a task's stored default, whose members may have been deleted since)."""
    repo = PromptRepository(session)
    if isinstance(spec, dict):
        versions = sorted(repo.list(task_id=task.id, limit=10_000, offset=0), key=rank_key)
        chosen = versions[: spec["top"]]
    else:
        chosen = []
        for prompt_id in spec:
            prompt = repo.get(prompt_id)
            if prompt is None or prompt.task_id != task.id:
                if not strict:
                    continue
                where = "does not exist" if prompt is None else f"belongs to another task (id {prompt.task_id})"
                raise InvalidInput(
                    f"ensemble prompt {prompt_id} {where}; an ensemble takes versions of task {task.name!r} "
                    f"(GET /v1/prompts?task={task.name})",
                    code="ensemble_invalid",
                )
            chosen.append(prompt)
    if not chosen and strict:
        raise Conflict(
            f"task {task.name!r} has no trained prompt yet; POST /v1/jobs to train one", code="task_not_trained"
        )
    return chosen


def average(results: Sequence[Sequence[dict[str, float]]]) -> list[dict[str, float]]:
    """Per input, the mean over members of each label's probability (members x inputs in, inputs out)."""
    count = len(results)
    return [
        {label: sum(member[i][label] for member in results) / count for label in results[0][i]}
        for i in range(len(results[0]))
    ]

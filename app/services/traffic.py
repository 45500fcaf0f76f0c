"""Canary traffic: a task's requests split between its versions by weight, in the same mixed batches.

A request that names a `user` always meets the same version while the split stands (a hash of the task and the
user picks the version); one without is drawn at random by weight.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Task
from app.db.repositories import PromptRepository
from app.errors import InvalidInput

MAX_SHARES = 8


def validate(session: Session, task: Task, shares: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The split as stored: versions of this task, each once, weights normalised to sum to 1."""
    ids = [int(share["prompt_id"]) for share in shares]
    if not 1 <= len(ids) <= MAX_SHARES or len(set(ids)) != len(ids):
        raise InvalidInput(
            f"traffic names 1 to {MAX_SHARES} distinct versions of the task; got {ids}", code="traffic_invalid"
        )
    repo = PromptRepository(session)
    for prompt_id in ids:
        prompt = repo.get(prompt_id)
        if prompt is None or prompt.task_id != task.id:
            where = "does not exist" if prompt is None else "is not a version of this task"
            raise InvalidInput(
                f"prompt {prompt_id} {where}; GET /v1/prompts?task={task.name} lists the task's versions",
                code="traffic_invalid",
            )
    total = sum(float(share["weight"]) for share in shares)
    return [{"prompt_id": i, "weight": float(share["weight"]) / total} for i, share in zip(ids, shares, strict=True)]


def pick(task: Task, user: str | None) -> int | None:
    """The version serving this request under the task's split (None: no split)."""
    if not task.traffic:
        return None
    if user is None:
        point = random.random()
    else:  # the same user meets the same version: a stable hash, not Python's salted one
        digest = hashlib.sha256(f"{task.id}\x00{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for share in task.traffic:
        edge += share["weight"]
        if point < edge:
            return int(share["prompt_id"])
    return int(task.traffic[-1]["prompt_id"])

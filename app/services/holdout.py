"""The evaluation holdout: a job that makes a version of a task without an evaluation set holds a seeded part of its
training dataset out as that set, so the evaluation gate scores every version on examples none of them trained on.

How much: a fifth of the dataset's examples, at most 500, and only from a labeled dataset of 100 or more (80+ left
to train on, 20+ to score). Examples with the same input stay on one side (a copy left in training would give its
answer away); a classification set keeps each label's share. The held-out examples become a dataset of the task's
tenant ("<task>-evaluation", counted by the storage quota like any other) recording its source dataset and rows, and
the task's evaluation_dataset_id. Every later job of the task on the source dataset trains without those rows.

Decided at enqueue, in the transaction that stores the job (the worker drops the rows the job row names): a crash
leaves both or neither. None is held out for a task with `evaluation_holdout` off or an evaluation set of its own, a
dataset without outputs or below the minimum, a dataset the task's versions or unfinished jobs already train on
whole (held-out rows would flatter them), or a storage quota without room; the job records why.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Dataset, Task
from app.db.repositories import DatasetRepository, TaskRepository
from app.errors import TooManyRequests
from app.services import quotas
from app.services.datasets import stored_size
from app.services.keys import Limits

FRACTION = 0.2
MAX_EXAMPLES = 500
MIN_EXAMPLES = 100
EVENT = "evaluation_holdout"


@dataclass(frozen=True)
class Decision:
    """What a job trains without (Job.evaluation_holdout) and the event that says so, if any."""

    stored: dict[str, Any]
    event: tuple[str, str, dict[str, Any]] | None = None


def _stored(
    evaluation: int | None, source: int, rows: list[int], *, created: bool = False, reason: str | None = None
) -> dict[str, Any]:
    return {
        "evaluation_dataset_id": evaluation,
        "source_dataset_id": source,
        "rows": rows,
        "created": created,
        "reason": reason,
    }


def held_out_rows(examples: list[dict[str, Any]], count: int, seed: int, *, stratify: bool) -> list[int]:
    """A seeded choice of `count` positions (fewer when inputs repeat): examples with the same input together, and
    with `stratify`, every output's share kept (each output's groups spread evenly over one ordering)."""
    groups: dict[str, list[int]] = {}
    for position, example in enumerate(examples):
        groups.setdefault(example["input"], []).append(position)
    strata: dict[str, list[list[int]]] = {}
    for rows in groups.values():
        strata.setdefault(str(examples[rows[0]].get("output")) if stratify else "", []).append(rows)
    rng = random.Random(seed)
    ordered: list[tuple[float, list[int]]] = []
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        ordered += [((number + rng.random()) / len(members), rows) for number, rows in enumerate(members)]
    ordered.sort(key=lambda item: item[0])
    chosen: list[int] = []
    for _, rows in ordered:
        if len(chosen) + len(rows) <= count:
            chosen += rows
    return sorted(chosen)


def _why_not(session: Session, task: Task, dataset: Dataset) -> str | None:
    if not dataset.labeled:
        return f"dataset {dataset.id} has inputs only, and an evaluation set needs outputs"
    if dataset.num_examples < MIN_EXAMPLES:
        return (
            f"dataset {dataset.id} has {dataset.num_examples} examples; an evaluation set is held out of datasets of "
            f"{MIN_EXAMPLES} or more, so this job trains on all of them"
        )
    versions, jobs = TaskRepository(session).trained_on(task.id, dataset.id)
    if versions or jobs:
        users = ", ".join([*(f"version {v}" for v in versions), *(f"job {j}" for j in jobs)])
        return (
            f"{users} of task {task.name!r} trained on all of dataset {dataset.id}; an evaluation set held out of it "
            "now would flatter them"
        )
    return None


def decide(session: Session, task: Task, dataset_id: int, seed: int, limits: Limits) -> Decision:
    """What a job of `task` training on `dataset_id` never trains on; holds a new evaluation set out of the dataset
    when the task has none (and lets it). Holds the task's row until the transaction ends."""
    task = TaskRepository(session).lock(task.id) or task
    datasets = DatasetRepository(session)
    current = datasets.get(task.evaluation_dataset_id) if task.evaluation_dataset_id is not None else None
    if current is not None:
        kept_out = list(current.source_rows or []) if current.source_dataset_id == dataset_id else []
        stored = _stored(current.id, dataset_id, kept_out)
        if not kept_out:
            return Decision(stored)
        message = (
            f"trains without the {len(kept_out)} examples of dataset {dataset_id} held out as the task's evaluation "
            f"set (dataset {current.id})"
        )
        return Decision(stored, (EVENT, message, {"evaluation_dataset_id": current.id, "excluded": len(kept_out)}))
    if not task.evaluation_holdout:
        return Decision(_stored(None, dataset_id, [], reason="the task's evaluation_holdout is off"))
    dataset = datasets.get(dataset_id, with_examples=True)
    assert dataset is not None  # checked, and share-locked, by the job kind's check
    reason = _why_not(session, task, dataset)
    rows: list[int] = []
    if reason is None:
        count = min(MAX_EXAMPLES, int(dataset.num_examples * FRACTION))
        rows = held_out_rows(dataset.examples, count, seed, stratify=task.kind == "classification")
        if not rows:
            reason = f"the inputs of dataset {dataset.id} repeat too much to hold a fifth out apart from the rest"
    held = None
    if reason is None:
        examples = [dataset.examples[row] for row in rows]
        try:
            quotas.check_storage(session, limits, adding=stored_size(examples))
        except TooManyRequests as exc:
            reason = f"no room for it: {exc.message}"
        else:
            held = _store(session, task, dataset, rows, examples)
    if held is None:
        message = f"no evaluation set held out: {reason}; PATCH /v1/tasks/{task.name} evaluation_dataset_id sets one"
        return Decision(_stored(None, dataset_id, [], reason=reason), (EVENT, message, {"reason": reason}))
    message = (
        f"held out {len(rows)} of dataset {dataset.id}'s {dataset.num_examples} examples as task {task.name!r}'s "
        f"evaluation set (dataset {held.id}, {held.name!r}); this job and later ones on dataset {dataset.id} train "
        f"on the other {dataset.num_examples - len(rows)}"
    )
    data = {"evaluation_dataset_id": held.id, "excluded": len(rows)}
    return Decision(_stored(held.id, dataset_id, rows, created=True), (EVENT, message, data))


def _store(session: Session, task: Task, source: Dataset, rows: list[int], examples: list[dict[str, Any]]) -> Dataset:
    held = DatasetRepository(session).add(
        Dataset(
            tenant=task.tenant,
            name=f"{task.name}-evaluation",
            num_examples=len(examples),
            labels=list(dict.fromkeys(example["output"] for example in examples)),
            labeled=True,
            examples=examples,
            size_bytes=stored_size(examples),
            source_dataset_id=source.id,
            source_rows=rows,
        )
    )
    task.evaluation_dataset_id = held.id
    return held


def excluded_rows(holdout: dict[str, Any] | None, dataset_id: int | None) -> set[int]:
    """The rows of `dataset_id` a job with this Job.evaluation_holdout never reads (training or validation)."""
    if not holdout or dataset_id is None or holdout.get("source_dataset_id") != dataset_id:
        return set()
    return set(holdout.get("rows") or [])

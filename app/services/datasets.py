"""Dataset use cases: store a validated upload, list, inspect, delete."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Dataset
from app.db.repositories import DatasetRepository
from app.errors import Conflict, InvalidInput, NotFound
from app.services import audit, quotas
from app.services.dataset_examples import Example, dataset_labels, parse_examples
from app.services.dataset_parsing import parse_upload
from app.services.keys import Limits
from app.text_checks import text_problem

PREVIEW_EXAMPLES = 5


def _store(session: Session, name: str, examples: list[Example], limits: Limits) -> Dataset:
    problem = text_problem(name)
    if problem:  # a form field or a file name can carry what a JSON body's checks would refuse
        raise InvalidInput(f"the dataset name {problem}; rename it", code="invalid_name")
    labeled = examples[0].output is not None  # parsing refuses a mix of labeled and unlabeled examples
    stored = [
        {"input": example.input, "output": example.output} if labeled else {"input": example.input}
        for example in examples
    ]
    size = stored_size(stored)
    quotas.check_dataset_size(limits, size)
    quotas.check_storage(session, limits, adding=size)
    dataset = Dataset(
        name=name,
        num_examples=len(examples),
        labels=dataset_labels(examples),
        labeled=labeled,
        examples=stored,
        size_bytes=size,
    )
    return DatasetRepository(session).add(dataset)


def stored_size(examples: list[dict[str, Any]]) -> int:
    """Bytes of examples as stored: what a dataset's size_bytes and the storage quota count."""
    return len(json.dumps(examples, ensure_ascii=False).encode())


def create_from_upload(
    session: Session,
    *,
    data: bytes,
    filename: str | None,
    content_type: str | None,
    name: str | None,
    max_examples: int,
    limits: Limits | None = None,
) -> Dataset:
    """Parse and validate an uploaded JSONL/CSV file, then store it whole (or not at all)."""
    examples = parse_upload(data, filename, content_type, max_examples=max_examples)
    name = (name or filename or "dataset").strip()[:200] or "dataset"
    return _store(session, name, examples, limits or Limits.unlimited())


def create_from_body(
    session: Session, *, name: str, items: list[dict[str, Any]], max_examples: int, limits: Limits | None = None
) -> Dataset:
    """Validate the examples of a JSON body, then store them."""
    return _store(session, name, parse_examples(items, max_examples=max_examples), limits or Limits.unlimited())


def get_dataset(session: Session, dataset_id: int, *, with_examples: bool = False, lock: str | None = None) -> Dataset:
    dataset = DatasetRepository(session).get(dataset_id, with_examples=with_examples, lock=lock)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id}; GET /v1/datasets lists them", code="dataset_not_found")
    return dataset


def list_datasets(session: Session, *, limit: int, offset: int) -> Sequence[Dataset]:
    return DatasetRepository(session).list(limit=limit, offset=offset)


def delete_dataset(session: Session, dataset_id: int) -> None:
    """Delete a dataset unless a queued or running job still needs it."""
    repo = DatasetRepository(session)
    # Locked first: a job being queued for it either committed before (and is seen below) or waits, then finds
    # the dataset gone (404), never a job pointing at a deleted dataset.
    dataset = get_dataset(session, dataset_id, lock="update")
    busy = repo.active_job_ids(dataset_id)
    if busy:
        raise Conflict(
            f"dataset {dataset_id} is used by unfinished job(s) {', '.join(map(str, busy))}; "
            "cancel them or wait until they finish",
            code="dataset_in_use",
        )
    repo.delete(dataset)
    audit.record(session, "delete", "dataset", dataset_id, {"name": dataset.name})


def check_labels(dataset: Dataset, labels: list[str]) -> None:
    """Refuse a classification dataset whose outputs are not among the task's labels."""
    declared = set(labels)
    unknown = [label for label in dataset.labels if label not in declared]
    if not unknown:
        return
    lines = [i + 1 for i, ex in enumerate(dataset.examples) if ex.get("output") not in declared][:10]
    raise InvalidInput(
        f"dataset {dataset.id} has outputs that are not labels of the task: {', '.join(map(repr, unknown[:10]))} "
        f"(examples {', '.join(map(str, lines))}); declare them on the task or fix the dataset",
        code="labels_not_declared",
        details={"unknown_labels": unknown, "examples": lines},
    )


def require_labeled(dataset: Dataset, why: str) -> None:
    """Refuse a dataset of inputs only where outputs are needed; `why` completes "outputs are needed ..."."""
    if not dataset.labeled:
        raise InvalidInput(
            f"dataset {dataset.id} has inputs only (no outputs); outputs are needed {why}",
            code="dataset_unlabeled",
        )

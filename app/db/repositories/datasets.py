"""Datasets: found (locked when a job or a delete is about to touch one), listed without their examples, the bytes
a storage quota counts, and the active jobs that still read one."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import defer

from app.db.models import Dataset, Job, Prompt
from app.db.repositories.jobs import ACTIVE_STATUSES
from app.db.repositories.tenancy import Repository


class DatasetRepository(Repository[Dataset]):
    model = Dataset

    def get(self, dataset_id: int, *, with_examples: bool = False, lock: str | None = None) -> Dataset | None:
        """A dataset; lock "share" (a job about to reference it) or "update" (about to delete it) holds its row
        for the transaction on PostgreSQL, so a job and a delete of the same dataset never interleave (SQLite
        serialises writers anyway)."""
        options = [] if with_examples else [defer(Dataset.examples)]
        if lock is None:
            return self._get(dataset_id, options)
        stmt = self._own(select(Dataset).options(*options).where(Dataset.id == dataset_id))
        return self.session.scalar(stmt.with_for_update(read=lock == "share"))

    def list(self, *, limit: int, offset: int) -> Sequence[Dataset]:
        """The tenant's datasets, by id, without their examples."""
        stmt = self._own(select(Dataset)).options(defer(Dataset.examples)).order_by(Dataset.id)
        return self.session.scalars(stmt.limit(limit).offset(offset)).all()

    def stored_bytes(self) -> int:
        """Bytes of the tenant's datasets and prompt versions: what the storage quota counts."""
        datasets = self.session.scalar(self._own(select(func.coalesce(func.sum(Dataset.size_bytes), 0))))
        prompts = self.session.scalar(self._own(select(func.coalesce(func.sum(Prompt.size_bytes), 0)), Prompt))
        return int(datasets or 0) + int(prompts or 0)

    def active_job_ids(self, dataset_id: int) -> Sequence[int]:
        """Queued or running jobs that read this dataset: as their (validation) dataset, or as a source task's."""
        stmt = select(Job.id).where(
            Job.status.in_(ACTIVE_STATUSES),
            (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id),
        )
        ids = set(self.session.scalars(stmt).all())
        # A meta_init job names its datasets in its options (JSON, read here: JSON queries differ by backend).
        sources = select(Job.id, Job.options).where(Job.status.in_(ACTIVE_STATUSES), Job.type == "meta_init")
        for job_id, options in self.session.execute(sources):
            if any(entry.get("dataset_id") == dataset_id for entry in (options or {}).get("tasks", [])):
                ids.add(job_id)
        return sorted(ids)

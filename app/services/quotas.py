"""Per-tenant quotas, answered with 429 and Retry-After.

The quotas count rows in the database, so they hold across API processes (rate limits: app/services/rate_limits.py).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.repositories import DatasetRepository, JobRepository
from app.errors import TooManyRequests
from app.services.keys import Limits

QUOTA_RETRY_SECONDS = 60  # a quota frees up when a job finishes or something is deleted: look again in a minute


def check_new_job(session: Session, limits: Limits) -> None:
    """Refuse a job beyond the tenant's concurrent-jobs quota, or while its storage quota is used up (a job
    stores a prompt)."""
    if limits.active_jobs and JobRepository(session).active_count() >= limits.active_jobs:
        raise TooManyRequests(
            f"at most {limits.active_jobs} jobs may be queued or running at once; wait for one to finish or cancel one",
            code="job_quota_exceeded",
            retry_after=QUOTA_RETRY_SECONDS,
        )
    check_storage(session, limits, adding=0)


def check_storage(session: Session, limits: Limits, *, adding: int) -> None:
    """Refuse to store `adding` more bytes beyond the tenant's storage quota."""
    if not limits.stored_bytes:
        return
    used = DatasetRepository(session).stored_bytes()
    if used + adding > limits.stored_bytes or (adding == 0 and used >= limits.stored_bytes):
        raise TooManyRequests(
            f"the storage quota of {limits.stored_bytes} bytes would be exceeded ({used} used, {adding} more "
            "asked); delete datasets or prompt versions first",
            code="storage_quota_exceeded",
            retry_after=QUOTA_RETRY_SECONDS,
        )


def check_dataset_size(limits: Limits, size: int) -> None:
    if limits.dataset_bytes and size > limits.dataset_bytes:
        raise TooManyRequests(
            f"this dataset is {size} bytes stored; this key may upload datasets up to {limits.dataset_bytes} bytes",
            code="dataset_quota_exceeded",
            retry_after=QUOTA_RETRY_SECONDS,
        )

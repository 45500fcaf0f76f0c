"""Per-key rate limits and per-tenant quotas, answered with 429 and Retry-After.

The rate limit is a token bucket per key in this process (a service run as several API processes allows each
process the rate); the quotas count rows in the database, so they hold across processes.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from app.db.repositories import DatasetRepository, JobRepository
from app.errors import TooManyRequests
from app.services.keys import Limits

QUOTA_RETRY_SECONDS = 60  # a quota frees up when a job finishes or something is deleted: look again in a minute


class RateLimiter:
    """Token buckets by key id: `rate` requests per second on average, bursts of 2 x rate (at least 1)."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, time of the last refill)
        self._lock = threading.Lock()

    def take(self, key_id: int, rate: float, now: float | None = None) -> None:
        """Spend one token of the key's bucket, or raise TooManyRequests saying when one will be there."""
        if rate <= 0:
            return
        now = time.monotonic() if now is None else now
        capacity = max(1.0, 2 * rate)
        with self._lock:
            tokens, last = self._buckets.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                raise TooManyRequests(
                    f"this key may make {rate:g} requests per second; slow down", retry_after=(1 - tokens) / rate
                )
            self._buckets[key_id] = (tokens - 1, now)


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

"""Job kinds: one module each, with TYPE and run(ctx) -> Trained; the worker dispatches on job.type."""

from __future__ import annotations

from collections.abc import Callable

from workers.jobs import distill, length_search, meta_init, train
from workers.jobs.base import JobContext, Trained

JOB_KINDS: dict[str, Callable[[JobContext], Trained]] = {
    train.TYPE: train.run,
    length_search.TYPE: length_search.run,
    distill.TYPE: distill.run,
    meta_init.TYPE: meta_init.run,
}

__all__ = ["JOB_KINDS", "JobContext", "Trained"]

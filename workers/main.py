"""The training worker: claim jobs, run them (workers/runner.py, with a heartbeat each: workers/heartbeat.py);
re-queue jobs of dead workers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.repositories import JobRepository
from app.engine.core.model import FrozenModel
from app.threads import ThreadBudget, enter
from workers.heartbeat import WorkerStopping
from workers.jobs import KINDS
from workers.runner import run_jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    poll_seconds: float = 1.0
    heartbeat_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0
    progress_min_interval: float = 0.2  # progress rows are cheap but not free: at most 5 writes a second
    pack_jobs: int = 8  # train jobs claimed together and trained in shared passes (1: one job at a time)
    threads: int | None = None  # PyTorch threads of the thread that runs the worker (app/threads.py); None: leave
    nice: int = 0  # that thread's niceness (Linux): above 0, other compute in the process runs first


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs training jobs from the database queue until stop is set."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        get_model: Callable[[], FrozenModel],
        settings: WorkerSettings,
        worker_id: str | None = None,
    ) -> None:
        self.sessions = session_factory
        self.get_model = get_model
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.stop = threading.Event()

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and run jobs until stop is set; an idle worker polls every poll_seconds."""
        if self.settings.threads is not None:
            enter(ThreadBudget(self.settings.threads, self.settings.nice))
        log.info(
            "worker %s started (%s PyTorch threads, nice %s)",
            self.worker_id,
            self.settings.threads or "default",
            self.settings.nice,
        )
        while not self.stop.is_set():
            try:
                self.requeue_stale()
                job_ids = self.claim_batch()
            except Exception:  # the database may be briefly unreachable; keep the worker alive
                log.exception("worker %s: queue access failed", self.worker_id)
                job_ids = []
            if not job_ids:
                self.stop.wait(self.settings.poll_seconds)
                continue
            self.run_jobs(job_ids)
        log.info("worker %s stopped", self.worker_id)

    def claim(self, types: tuple[str, ...] | None = None) -> int | None:
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            job_id = repo.claim(self.worker_id, types=types)
            if job_id is not None:
                job = repo.get(job_id)
                assert job is not None
                repo.add_event(
                    job_id,
                    "started",
                    f"worker {self.worker_id} started attempt {job.attempts}",
                    {"worker_id": self.worker_id, "attempt": job.attempts},
                )
            return job_id

    def claim_batch(self) -> list[int]:
        """The next job and, when its kind packs (train), up to pack_jobs - 1 more queued jobs of that kind to train
        beside it in shared passes (a burst of uploads trains as one)."""
        first = self.claim()
        if first is None:
            return []
        with self.sessions() as session:
            job = JobRepository(session).get(first)
            kind = KINDS.get(job.type) if job is not None else None
        claimed = [first]
        while kind is not None and kind.packable and len(claimed) < self.settings.pack_jobs:
            more = self.claim(types=(kind.name,))
            if more is None:
                break
            claimed.append(more)
        return claimed

    def requeue_stale(self) -> None:
        """Give jobs of silent workers back to the queue, or fail them after max_attempts."""
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            for job in repo.stale_running(timedelta(seconds=self.settings.heartbeat_timeout_seconds)):
                silent = f"worker {job.worker_id} went silent"
                if job.cancel_requested:
                    job.status, job.finished_at = JobStatus.cancelled, utcnow()
                    repo.add_event(job.id, "cancelled", f"{silent}; the job had been asked to cancel")
                elif job.attempts >= job.max_attempts:
                    job.status, job.finished_at = JobStatus.failed, utcnow()
                    job.error = f"{silent} on attempt {job.attempts} of {job.max_attempts}; giving up"
                    repo.add_event(job.id, "failed", job.error)
                else:
                    job.status = JobStatus.queued
                    # The next attempt starts from step 0: the dead attempt's progress would read as done work.
                    job.progress = {"step": 0, "total_steps": (job.progress or {}).get("total_steps", 0)}
                    repo.add_event(
                        job.id,
                        "requeued",
                        f"{silent}; queued again (attempt {job.attempts} of {job.max_attempts} used)",
                    )
                job.worker_id = None

    # -- claimed jobs ------------------------------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        """Train, then store the prompt and finish the job in one transaction; record failures."""
        self.run_jobs([job_id])

    def run_jobs(self, job_ids: list[int]) -> None:
        """Run claimed jobs (workers/runner.py): a packable kind's jobs in shared passes, others one by one."""
        run_jobs(self, job_ids)

    def check_stop(self) -> None:
        """Raise WorkerStopping once stop is set: called all through a job's passes (workers/interrupt.py), so a
        stopping worker hands its jobs back within moments, mid-pass, whatever their kind; storing a finished
        job's prompt runs outside it and is never cut short."""
        if self.stop.is_set():
            raise WorkerStopping("the worker is stopping")

"""The training worker: claim a job, heartbeat while it runs, store the result; re-queue jobs of dead workers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.repositories import JobRepository
from app.engine.methods import parse_config
from app.engine.model import FrozenModel
from app.services.job_types import job_config
from app.services.prompts import store_prompt
from workers.inputs import load_inputs
from workers.jobs import JOB_KINDS, JobContext
from workers.training import Cancelled, EvalReport, StepReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    poll_seconds: float = 1.0
    heartbeat_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0
    progress_min_interval: float = 0.2  # progress rows are cheap but not free: at most 5 writes a second


class JobLost(Exception):
    """The job is no longer ours: deleted with its task, or re-queued after our heartbeat went silent."""


class WorkerStopping(Exception):
    """The worker was asked to stop (SIGTERM); the job goes back to the queue for another worker."""


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
        log.info("worker %s started", self.worker_id)
        while not self.stop.is_set():
            try:
                self.requeue_stale()
                job_id = self.claim()
            except Exception:  # the database may be briefly unreachable; keep the worker alive
                log.exception("worker %s: queue access failed", self.worker_id)
                job_id = None
            if job_id is None:
                self.stop.wait(self.settings.poll_seconds)
                continue
            self.run_job(job_id)
        log.info("worker %s stopped", self.worker_id)

    def claim(self) -> int | None:
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            job_id = repo.claim(self.worker_id)
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

    # -- one job ---------------------------------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        """Train, then store the prompt and finish the job in one transaction; record failures."""
        beat = _Heartbeat(self, job_id)
        beat.start()
        try:
            outcome: tuple[JobStatus, dict[str, Any]] = self._train(job_id, beat)
        except Cancelled:
            outcome = (JobStatus.cancelled, {})
        except JobLost:
            log.warning("worker %s lost job %s; dropping its work", self.worker_id, job_id)
            return
        except WorkerStopping:
            with self.sessions.begin() as session:
                repo = JobRepository(session)
                restart = {"step": 0, "total_steps": beat.progress.get("total_steps", 0)}
                if repo.release(job_id, self.worker_id, progress=restart):
                    repo.add_event(job_id, "requeued", f"worker {self.worker_id} is shutting down; queued again")
            return
        except Exception as exc:
            log.exception("job %s failed", job_id)
            outcome = (JobStatus.failed, {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            beat.close()
        status, values = outcome
        if status is not JobStatus.succeeded:
            with self.sessions.begin() as session:
                repo = JobRepository(session)
                if repo.finish(job_id, self.worker_id, status, **values):
                    message = values.get("error") or "cancelled on request"
                    repo.add_event(job_id, status.value, message)

    def _train(self, job_id: int, beat: _Heartbeat) -> tuple[JobStatus, dict[str, Any]]:
        with self.sessions() as session:
            job = JobRepository(session).get(job_id)
            if job is None:
                raise JobLost(job_id)
            run = JOB_KINDS.get(job.type)
            if run is None:
                raise ValueError(f"this worker knows no job type {job.type!r}; known: {', '.join(JOB_KINDS)}")
            hyperparameters = dict(job.hyperparameters)
            config = parse_config(job_config(job.type, hyperparameters))
            # The trainer refuses rows longer than the context itself, naming the example.
            model = self.get_model()
            tenant = job.tenant
            inputs = load_inputs(session, job, config, model)
            task_id, dataset_id, options = job.task_id, job.dataset_id, dict(job.options or {})
            lineage: dict[str, Any] = {
                "job_type": job.type,
                "job_id": job_id,
                "dataset_id": dataset_id,
                "validation_dataset_id": job.validation_dataset_id,
                "init": hyperparameters.get("init"),
                "init_prompt_id": config.init_prompt_id,
            }
        beat.progress = {"step": 0, "total_steps": job.progress.get("total_steps", config.steps)}
        context = JobContext(
            model=model,
            spec=inputs.spec,
            train=inputs.train,
            val=inputs.val,
            config=config,
            options=options,
            init=inputs.init,
            on_step=beat.on_step,
            on_eval=beat.on_eval,
            should_stop=beat.should_stop,
            event=lambda kind, message, data: beat.beat(event=(kind, message, data)),
            set_total_steps=lambda total: beat.progress.update(total_steps=total),
            hyperparameters=hyperparameters,
            teachers=inputs.teachers,
            sources=inputs.sources,
            candidates=inputs.candidates,
        )
        result = run(context)
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            prompt = store_prompt(
                session,
                tenant=tenant,
                task_id=task_id,
                artifact=result.artifact,
                positions=result.positions,
                hidden_size=model.hidden_size,
                identity=model.identity,
                metrics=result.metrics,
                hyperparameters=result.hyperparameters,
                job_id=job_id,
                dataset_id=dataset_id,
                lineage={**lineage, **result.lineage, "hyperparameters": result.hyperparameters},
                name=result.name,
            )
            total = beat.progress.get("total_steps", config.steps)
            progress = {**beat.progress, "step": total, "total_steps": total}
            if not repo.finish(
                job_id, self.worker_id, JobStatus.succeeded, result_prompt_id=prompt.id, progress=progress
            ):
                session.rollback()
                raise JobLost(job_id)
            kind = "meta-initialisation" if task_id is None else "prompt"
            repo.add_event(
                job_id,
                "succeeded",
                f"stored {kind} {prompt.id} (version {prompt.version}, method {result.artifact.method}) "
                f"from step {result.best_step}",
                {"prompt_id": prompt.id, "metrics": result.metrics},
            )
        return JobStatus.succeeded, {}


class _Heartbeat:
    """Beats for a running job from its own thread (evaluations can outlast a step) and relays progress."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker, self.job_id = worker, job_id
        self.progress: dict[str, Any] = {}
        self.cancelled = False
        self.lost = False
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.worker.settings.heartbeat_seconds):
            self.beat(force=True)

    def beat(self, *, force: bool = False, event: tuple[str, str, dict[str, Any]] | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and event is None and now - self._last_write < self.worker.settings.progress_min_interval:
                return
            self._last_write = now
            try:
                with self.worker.sessions.begin() as session:
                    repo = JobRepository(session)
                    flag = repo.heartbeat(self.job_id, self.worker.worker_id, dict(self.progress))
                    if flag is None:
                        self.lost = True
                        return
                    self.cancelled = self.cancelled or flag
                    if event is not None:
                        repo.add_event(self.job_id, *event)
            except Exception:  # a missed beat is retried on the next one
                log.exception("heartbeat of job %s failed", self.job_id)

    def on_step(self, report: StepReport) -> None:
        self.progress.update(step=report.step, total_steps=report.total_steps, loss=report.loss)
        self.beat()

    def on_eval(self, report: EvalReport) -> None:
        self.progress.update(val_loss=report.val_loss, val_accuracy=report.val_accuracy)
        data = {
            "step": report.step,
            "val_loss": report.val_loss,
            "val_accuracy": report.val_accuracy,
            "loss": self.progress.get("loss"),
        }
        acc = "" if report.val_accuracy is None else f", val_accuracy {report.val_accuracy:.4f}"
        self.beat(event=("metrics", f"step {report.step}: val_loss {report.val_loss:.4f}{acc}", data))

    def should_stop(self) -> bool:
        if self.lost:
            raise JobLost(self.job_id)
        if self.worker.stop.is_set():
            raise WorkerStopping(self.job_id)
        return self.cancelled

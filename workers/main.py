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
from app.engine.core.model import FrozenModel
from app.engine.methods import parse_config
from app.services.job_types import job_config
from app.services.prompts import store_prompt
from app.threads import Budget, enter
from workers.inputs import load_inputs
from workers.interrupt import interruptible
from workers.jobs import JOB_KINDS, JobContext, Trained
from workers.jobs import train as train_kind
from workers.training import Cancelled, EvalReport, StepReport

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
        if self.settings.threads is not None:
            enter(Budget(self.settings.threads, self.settings.nice))
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
        """The next job and, when it is a train job, up to pack_jobs - 1 more queued train jobs to train beside it
        in shared passes (a burst of uploads trains as one)."""
        first = self.claim()
        if first is None:
            return []
        with self.sessions() as session:
            job = JobRepository(session).get(first)
            packable = job is not None and job.type == train_kind.TYPE
        claimed = [first]
        while packable and len(claimed) < self.settings.pack_jobs:
            more = self.claim(types=(train_kind.TYPE,))
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

    # -- one job ---------------------------------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        """Train, then store the prompt and finish the job in one transaction; record failures."""
        self.run_jobs([job_id])

    def run_jobs(self, job_ids: list[int]) -> None:
        """Run claimed jobs: train jobs packed together (workers/jobs/train.run_many), other kinds one by one; each
        job then ends on its own (stored, cancelled, failed, released or dropped), whatever the others did."""
        beats = {job_id: _Heartbeat(self, job_id) for job_id in job_ids}
        for beat in beats.values():
            beat.start()
        try:
            outcomes: dict[int, Trained | BaseException] = {}
            prepared: list[_Prepared] = []
            for job_id in job_ids:
                try:
                    prepared.append(self._prepare(job_id, beats[job_id]))
                except Exception as exc:
                    outcomes[job_id] = exc
            packed = [p for p in prepared if p.job_type == train_kind.TYPE] if len(prepared) > 1 else []
            if len(packed) > 1:
                for p in packed:
                    others = [q.job_id for q in packed if q is not p]
                    p.context.event(
                        "packed",
                        f"training in shared passes with job{'s' if len(others) > 1 else ''} "
                        + ", ".join(map(str, others)),
                        {"packed_with": others},
                    )
                with interruptible(self._check_stop):
                    results = train_kind.run_many([p.context for p in packed])
                outcomes.update(zip([p.job_id for p in packed], results, strict=True))
            for p in prepared:
                if p.job_id in outcomes:
                    continue
                try:
                    with interruptible(self._check_stop):
                        outcomes[p.job_id] = JOB_KINDS[p.job_type](p.context)
                except Exception as exc:
                    outcomes[p.job_id] = exc
            ready = {p.job_id: p for p in prepared}
            for job_id in job_ids:
                self._conclude(job_id, beats[job_id], ready.get(job_id), outcomes[job_id])
        finally:
            for beat in beats.values():
                beat.close()

    def _check_stop(self) -> None:
        """Raise WorkerStopping once stop is set: called all through a job's passes (workers/interrupt.py), so a
        stopping worker hands its jobs back within moments, mid-pass, whatever their kind; storing a finished
        job's prompt runs outside it and is never cut short."""
        if self.stop.is_set():
            raise WorkerStopping("the worker is stopping")

    def _conclude(
        self, job_id: int, beat: _Heartbeat, prepared: _Prepared | None, outcome: Trained | BaseException
    ) -> None:
        """Store a job's prompt, or record how it ended."""
        beat.beat(force=True)  # the curve's last points, written while the job is still running
        values: dict[str, Any] = {}
        if isinstance(outcome, Trained):
            assert prepared is not None
            try:
                self._store(prepared, beat, outcome)
                return
            except JobLost:
                outcome = JobLost(job_id)
            except Exception as exc:
                log.exception("job %s: storing its prompt failed", job_id)
                outcome = exc
        if isinstance(outcome, JobLost):
            log.warning("worker %s lost job %s; dropping its work", self.worker_id, job_id)
            return
        if isinstance(outcome, WorkerStopping):
            with self.sessions.begin() as session:
                repo = JobRepository(session)
                restart = {"step": 0, "total_steps": beat.progress.get("total_steps", 0)}
                if repo.release(job_id, self.worker_id, progress=restart):
                    repo.add_event(job_id, "requeued", f"worker {self.worker_id} is shutting down; queued again")
            return
        if isinstance(outcome, Cancelled):
            status = JobStatus.cancelled
        elif isinstance(outcome, Exception):
            log.error("job %s failed", job_id, exc_info=outcome)
            status, values = JobStatus.failed, {"error": f"{type(outcome).__name__}: {outcome}"}
        else:  # KeyboardInterrupt, SystemExit: not one job's doing
            raise outcome
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            if repo.finish(job_id, self.worker_id, status, **values):
                message = values.get("error") or "cancelled on request"
                repo.add_event(job_id, status.value, message)

    def _prepare(self, job_id: int, beat: _Heartbeat) -> _Prepared:
        """Read a claimed job and its inputs into the context its kind runs with."""
        with self.sessions() as session:
            job = JobRepository(session).get(job_id)
            if job is None:
                raise JobLost(job_id)
            if job.type not in JOB_KINDS:
                raise ValueError(f"this worker knows no job type {job.type!r}; known: {', '.join(JOB_KINDS)}")
            hyperparameters = dict(job.hyperparameters)
            config = parse_config(job_config(job.type, hyperparameters))
            # The trainer refuses rows longer than the context itself, naming the example.
            model = self.get_model()
            inputs = load_inputs(session, job, config, model)
            prepared = _Prepared(
                job_id=job_id,
                job_type=job.type,
                tenant=job.tenant,
                task_id=job.task_id,
                dataset_id=job.dataset_id,
                total_steps=job.progress.get("total_steps", config.steps),
                lineage={
                    "job_type": job.type,
                    "job_id": job_id,
                    "dataset_id": job.dataset_id,
                    "validation_dataset_id": job.validation_dataset_id,
                    "init": hyperparameters.get("init"),
                    "init_prompt_id": config.init_prompt_id,
                },
                context=JobContext(
                    model=model,
                    spec=inputs.spec,
                    train=inputs.train,
                    val=inputs.val,
                    config=config,
                    options=dict(job.options or {}),
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
                ),
            )
        beat.progress = {"step": 0, "total_steps": prepared.total_steps}
        beat.attempt = job.attempts
        return prepared

    def _store(self, prepared: _Prepared, beat: _Heartbeat, result: Trained) -> None:
        """Store the prompt and finish the job in one transaction (JobLost when the job is no longer ours)."""
        model, job_id, config = prepared.context.model, prepared.job_id, prepared.context.config
        with self.sessions.begin() as session:
            repo = JobRepository(session)
            prompt = store_prompt(
                session,
                tenant=prepared.tenant,
                task_id=prepared.task_id,
                artifact=result.artifact,
                positions=result.positions,
                hidden_size=model.hidden_size,
                identity=model.identity,
                metrics=result.metrics,
                hyperparameters=result.hyperparameters,
                job_id=job_id,
                dataset_id=prepared.dataset_id,
                lineage={**prepared.lineage, **result.lineage, "hyperparameters": result.hyperparameters},
                name=result.name,
            )
            total = beat.progress.get("total_steps", config.steps)
            progress = {**beat.progress, "step": total, "total_steps": total}
            if not repo.finish(
                job_id, self.worker_id, JobStatus.succeeded, result_prompt_id=prompt.id, progress=progress
            ):
                session.rollback()
                raise JobLost(job_id)
            kind = "meta-initialisation" if prepared.task_id is None else "prompt"
            repo.add_event(
                job_id,
                "succeeded",
                f"stored {kind} {prompt.id} (version {prompt.version}, method {result.artifact.method}) "
                f"from step {result.best_step}",
                {"prompt_id": prompt.id, "metrics": result.metrics},
            )


@dataclass
class _Prepared:
    """A claimed job read from the database: what its kind runs with and what storing its result needs."""

    job_id: int
    job_type: str
    tenant: str
    task_id: int | None
    dataset_id: int | None
    total_steps: int
    lineage: dict[str, Any]
    context: JobContext


class _Heartbeat:
    """Beats for a running job from its own thread (evaluations can outlast a step) and relays progress."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker, self.job_id = worker, job_id
        self.progress: dict[str, Any] = {}
        self.attempt = 0
        self.points: list[dict[str, Any]] = []  # the curve's points not written yet (written with the next beat)
        self._started = time.monotonic()
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
                    if self.points:
                        repo.add_metrics(self.job_id, self.attempt, self.points)
                self.points = []
            except Exception:  # a missed beat is retried on the next one
                log.exception("heartbeat of job %s failed", self.job_id)

    def _point(self, step: int, **values: float | None) -> None:
        """Add to the curve: into the step's unwritten point, or a new one."""
        with self._lock:
            seconds = time.monotonic() - self._started
            if self.points and self.points[-1]["step"] == step:
                self.points[-1].update(values, seconds=seconds)
            else:
                self.points.append({"step": step, "seconds": seconds, **values})

    def on_step(self, report: StepReport) -> None:
        self.progress.update(step=report.step, total_steps=report.total_steps, loss=report.loss)
        self._point(report.step, loss=report.loss, learning_rate=report.lr)
        self.beat()

    def on_eval(self, report: EvalReport) -> None:
        self.progress.update(val_loss=report.val_loss, val_accuracy=report.val_accuracy)
        self._point(report.step, val_loss=report.val_loss, val_score=report.val_accuracy)
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

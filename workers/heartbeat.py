"""A running job's heartbeat: its own thread writes progress, the curve's points and events, and reads back whether
the job was cancelled or lost (re-queued after a silence, or deleted with its task)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from app.db.repositories import JobRepository
from workers.training import EvalReport, StepReport

if TYPE_CHECKING:
    from workers.main import Worker

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The job is no longer ours: deleted with its task, or re-queued after our heartbeat went silent."""


class WorkerStopping(Exception):
    """The worker was asked to stop (SIGTERM); the job goes back to the queue for another worker."""


class Heartbeat:
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

    def trial(self, number: int, values: dict[str, Any], details: dict[str, Any] | None = None, /) -> None:
        """Record a tune job's trial (JobTrial's columns); one that ended adds a `trial` event (with details)."""
        with self._lock:
            try:
                with self.worker.sessions.begin() as session:
                    repo = JobRepository(session)
                    repo.save_trial(self.job_id, self.attempt, number, **values)
                    if values.get("state") in ("pruned", "finished", "failed"):
                        value = values.get("value")
                        shown = "no score" if value is None else f"value {value:.4f}"
                        message = f"trial {number} ({values.get('method')}) {values['state']}: {shown}"
                        repo.add_event(self.job_id, "trial", message, {"number": number, **values, **(details or {})})
            except Exception:  # the curve and events are kept; a lost trial row is not worth the job
                log.exception("recording trial %s of job %s failed", number, self.job_id)

    def should_stop(self) -> bool:
        if self.lost:
            raise JobLost(self.job_id)
        if self.worker.stop.is_set():
            raise WorkerStopping(self.job_id)
        return self.cancelled

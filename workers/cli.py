"""Standalone worker process: load the model, then claim jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from app.config import Settings
from app.db.session import make_engine, make_session_factory
from app.logs import configure_logging
from app.model_loading import load_configured_model
from app.threads import ThreadBudget, process_budget, training_budget
from workers.main import Worker, WorkerSettings


def worker_settings(settings: Settings, *, embedded: bool) -> WorkerSettings:
    """A worker's settings; embedded: the training thread inside the API process (its own thread budget), else a
    standalone worker process (the process budget). Training runs at PROMPTBANK_TRAINING_NICE either way, so an
    API on the same host serves first."""
    budget = (
        training_budget(settings.training_threads, settings.training_nice)
        if embedded
        else ThreadBudget(process_budget(settings.torch_threads, "worker").threads, settings.training_nice)
    )
    return WorkerSettings(
        poll_seconds=settings.worker_poll_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        pack_jobs=settings.worker_pack_jobs,
        threads=budget.threads,
        nice=budget.nice,
    )


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    engine = make_engine(settings.resolved_database_url)
    model = load_configured_model(settings)
    worker = Worker(make_session_factory(engine), lambda: model, worker_settings(settings, embedded=False))

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %s: stopping; a running job goes back to the queue", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
    engine.dispose()

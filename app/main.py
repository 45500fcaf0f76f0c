"""create_app(): the lifespan builds the database engine and the ModelRuntime once per process."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.admission import Admission
from app.api.auth import AuthState
from app.api.body_limits import BodyLimits
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.local_guard import LocalGuard
from app.api.metrics import Metrics, ServiceCollector, SharedLimitsCollector
from app.api.request_ids import RequestIds
from app.api.routes import datasets, health, infer, jobs, keys, methods, openai, prompts, tasks, ui
from app.config import Settings
from app.db.session import make_engine, make_read_session_factory, make_session_factory
from app.engine.serving.batcher import BatcherOptions
from app.engine.serving.runtime import ModelRuntime, ServingOptions
from app.logs import configure_logging
from app.migrate import upgrade
from app.model_loading import load_configured_model
from app.services.shared_limits import SharedLimits
from app.threads import process_budget
from workers.cli import worker_settings
from workers.main import Worker

log = logging.getLogger(__name__)


def serving_options(settings: Settings) -> ServingOptions:
    """The engine's batching and pool limits from the settings."""
    return ServingOptions(
        pool_capacity=settings.pool_capacity,
        pool_max_bytes=settings.pool_max_bytes,
        batcher=BatcherOptions(
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.batch_wait_ms,
            wait_share=settings.batch_wait_share,
            max_queue_rows=settings.max_queue_rows,
            threads=process_budget(settings.torch_threads, "api").threads,
        ),
    )


def _shared_limits(settings: Settings) -> SharedLimits | None:
    """Redis for the limits every API process shares, when PROMPTBANK_REDIS_URL is set; a Redis that does not
    answer yet is no reason not to start (each process limits on its own until it does)."""
    if settings.redis_url is None:
        return None
    shared = SharedLimits(settings.redis_url, settings.redis_key_prefix)
    if shared.ping():
        log.info("rate limits and failed-key counts are shared through Redis at %s", shared.where)
    else:
        log.warning("Redis at %s does not answer: each API process limits on its own until it does", shared.where)
    return shared


def create_app(settings: Settings | None = None, runtime: ModelRuntime | None = None) -> FastAPI:
    """The ASGI app; runtime is injectable so tests can serve a tiny in-process model."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        if settings.auto_migrate:
            upgrade(url)
        engine = make_engine(url)
        model_runtime = runtime or ModelRuntime(
            (lambda: load_configured_model(settings)) if settings.load_model else None, serving_options(settings)
        )
        app.state.settings = settings
        shared = _shared_limits(settings)
        app.state.shared_limits = shared
        app.state.auth = AuthState(settings, shared)
        # An admitted model request never waits for a thread: the pool is larger than the admission limit.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, settings.max_inflight_requests + 32)
        app.state.session_factory = make_session_factory(engine)
        app.state.read_session_factory = make_read_session_factory(engine)
        model_runtime.start()
        app.state.runtime = model_runtime
        worker: Worker | None = None
        thread: threading.Thread | None = None
        if settings.run_worker and model_runtime.enabled:
            worker = Worker(app.state.session_factory, model_runtime.wait, worker_settings(settings, embedded=True))
            thread = threading.Thread(target=worker.run, name="promptbank-worker", daemon=True)
            thread.start()
        try:
            yield
        finally:
            if worker is not None and thread is not None:
                worker.stop.set()  # a running job is cut short mid-pass and queued again
                thread.join(timeout=60)
            model_runtime.close()
            engine.dispose()
            if shared is not None:
                shared.close()

    public = settings.public_docs
    app = FastAPI(
        title="promptbank",
        version="0.1.0",
        summary="Many NLP tasks on one frozen language model; each task is a learned soft prompt.",
        lifespan=lifespan,
        docs_url=None,  # /docs: install_docs, from local files (FastAPI's own loads from a CDN); no /redoc
        redoc_url=None,
        openapi_url="/openapi.json" if public else None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimits, default=settings.max_body_bytes, uploads=settings.max_upload_bytes)
    app.add_middleware(Admission, limit=settings.max_inflight_requests)
    # single-user mode: loopback (or allowed) Host only, no cross-site writes; before any body is read
    app.add_middleware(LocalGuard, settings=settings)
    metrics = Metrics(task_labels=settings.metrics_task_labels)
    metrics.add_collector(
        ServiceCollector(lambda: getattr(app.state, "runtime", None), lambda: app.state.read_session_factory)
    )
    metrics.add_collector(SharedLimitsCollector(lambda: getattr(app.state, "shared_limits", None)))
    app.state.metrics = metrics
    # outermost: every response carries X-Request-ID, every log line the id; it measures every request, refusals of
    # the middlewares included, for the access line and the metrics
    app.add_middleware(RequestIds, metrics=metrics)
    if settings.cors_origins:  # closed by default: without the middleware no browser may call across origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    for module in (health, tasks, datasets, jobs, methods, prompts, infer, openai, keys, ui):
        app.include_router(module.router)
    install_docs(app, public=public)
    return app


app = create_app()

"""The process's one frozen model: loaded once in the background, served by one batcher thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.serving.batcher import Batcher, BatcherOptions, QueueTimeout, RequestCancelled, Result
from app.engine.serving.pool import PromptPool

log = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """The model is still loading, failed to load, or is switched off in this process."""


@dataclass(frozen=True)
class ServingOptions:
    pool_capacity: int = 1024  # prompts whose keys/values stay on the device
    pool_max_bytes: int | None = None  # and at most this many bytes of them
    batcher: BatcherOptions = BatcherOptions()


class ModelRuntime:
    """Owns the FrozenModel of the process, its prompt pool and the batcher thread that serves inference.

    Inference runs only on the batcher's thread, so concurrent HTTP requests never oversubscribe the cores or
    race on the device; training workers use the same FrozenModel from their own thread (the model holds no
    per-request state, so that is safe). It reads nothing: callers hand it the prompts its pool lacks (missing()).
    """

    def __init__(self, load: Callable[[], FrozenModel] | None, options: ServingOptions | None = None) -> None:
        self._load = load
        self.options = options or ServingOptions()
        self._model: FrozenModel | None = None
        self._batcher: Batcher | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._load_thread: threading.Thread | None = None

    @classmethod
    def from_model(cls, model: FrozenModel, options: ServingOptions | None = None) -> ModelRuntime:
        runtime = cls(None, options)
        runtime._model = model
        return runtime

    def start(self) -> None:
        """Start serving; load the model in the background if it is not loaded yet."""
        if self._model is not None:
            self._start_batcher(self._model)
        elif self._load is not None and self._load_thread is None:
            self._load_thread = threading.Thread(target=self._run_load, name="promptbank-model-load", daemon=True)
            self._load_thread.start()

    def _start_batcher(self, model: FrozenModel) -> None:
        pool = PromptPool(
            model,
            self.options.pool_capacity,
            max_bytes=self.options.pool_max_bytes,
            max_batch_tokens=self.options.batcher.max_batch_tokens,
        )
        self._batcher = Batcher(model, pool, self.options.batcher)
        self._batcher.start()
        self._ready.set()

    def _run_load(self) -> None:
        assert self._load is not None
        try:
            model = self._load()
            self._model = model
            self._start_batcher(model)
            log.info("frozen model ready: %s", model.identity)
        except BaseException as exc:  # reported by /healthz and every call; the process stays up
            log.exception("loading the frozen model failed")
            self._error = exc
            self._ready.set()

    @property
    def enabled(self) -> bool:
        return self._load is not None or self._model is not None

    @property
    def model(self) -> FrozenModel | None:
        return self._model if self._ready.is_set() else None

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> FrozenModel:
        """The loaded model, waiting up to timeout seconds; ModelNotReady otherwise."""
        if not self.enabled:
            raise ModelNotReady("this process runs without a model (PROMPTBANK_LOAD_MODEL=false)")
        if not self._ready.wait(timeout):
            raise ModelNotReady("the frozen model is still loading; retry in a few seconds")
        if self._model is None or self._batcher is None:
            raise ModelNotReady(f"the frozen model failed to load: {self._error}")
        return self._model

    def missing(self, prompt_ids: Iterable[int]) -> set[int]:
        """The prompts among these the pool lacks now: the caller reads them and hands them to submit/run."""
        self.wait(timeout=0)
        assert self._batcher is not None
        return self._batcher.missing(prompt_ids)

    def submit(
        self,
        rows: list[Row],
        *,
        prompts: Mapping[int, Segments] | None = None,
        priority: int = 0,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Future[Result]:
        """Queue rows for the batcher, with the segments of their prompts the pool lacks (see Batcher.submit)."""
        self.wait(timeout=0)
        assert self._batcher is not None
        return self._batcher.submit(rows, prompts=prompts, priority=priority, timeout=timeout, cancel=cancel)

    def run(
        self,
        rows: list[Row],
        *,
        prompts: Mapping[int, Segments] | None = None,
        priority: int = 0,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Submit rows and wait for their results.

        timeout bounds the whole request, queue and compute: past it, or once `cancel` is set (the client went
        away), the rows are cancelled (a decoding row stops at its next step) and QueueTimeout or RequestCancelled
        is raised. PromptMissing: a prompt was neither pooled nor given, or was evicted before the request's
        round; the caller reads it and runs the request again.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(rows, prompts=prompts, priority=priority, timeout=timeout, cancel=cancel)
        return _wait(future, deadline, cancel)

    def discard_prompt(self, prompt_id: int) -> None:
        """Drop a deleted prompt's cached keys/values."""
        if self._batcher is not None:
            self._batcher.discard(prompt_id)

    def stats(self) -> dict[str, Any] | None:
        return self._batcher.stats() if self._batcher is not None else None

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None


POLL_SECONDS = 0.05  # how often a waiting request looks at its cancel event


def _wait(future: Future[Result], deadline: float | None, cancel: threading.Event | None) -> Result:
    if deadline is None and cancel is None:
        return future.result()
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            return future.result(timeout=POLL_SECONDS if left is None else max(0.0, min(POLL_SECONDS, left)))
        except FutureTimeout:
            pass
        if cancel is not None and cancel.is_set():
            future.cancel()
            raise RequestCancelled("the client went away; its rows were dropped")
        if deadline is not None and time.monotonic() >= deadline:
            future.cancel()
            if cancel is not None:
                cancel.set()  # rows already decoding stop at their next step
            raise QueueTimeout("the request passed its timeout before it was answered; its work was stopped")

"""The process's one frozen model: loaded once in the background, used by one inference thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.engine.model import FrozenModel

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelNotReady(RuntimeError):
    """The model is still loading, failed to load, or is switched off in this process."""


class ModelRuntime:
    """Owns the FrozenModel of the process and the single thread that runs inference on it.

    Inference calls are serialised on one thread so that concurrent HTTP requests never oversubscribe the
    CPU cores or race on the device; training workers use the same FrozenModel from their own thread (the
    model holds no per-request state, so that is safe).
    """

    def __init__(self, load: Callable[[], FrozenModel] | None) -> None:
        self._load = load
        self._model: FrozenModel | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptbank-engine")
        self._loader: threading.Thread | None = None

    @classmethod
    def from_model(cls, model: FrozenModel) -> ModelRuntime:
        runtime = cls(None)
        runtime._model = model
        runtime._ready.set()
        return runtime

    def start(self) -> None:
        """Begin loading in a background thread (start-up must not wait minutes for a first conversion)."""
        if self._load is None or self._loader is not None:
            return
        self._loader = threading.Thread(target=self._run_load, name="promptbank-model-load", daemon=True)
        self._loader.start()

    def _run_load(self) -> None:
        assert self._load is not None
        try:
            self._model = self._load()
            log.info("frozen model ready: %s", self._model.identity)
        except BaseException as exc:  # reported by /healthz and every call; the process stays up
            log.exception("loading the frozen model failed")
            self._error = exc
        finally:
            self._ready.set()

    @property
    def enabled(self) -> bool:
        return self._load is not None or self._model is not None

    @property
    def model(self) -> FrozenModel | None:
        return self._model

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> FrozenModel:
        """The loaded model, waiting up to timeout seconds; ModelNotReady otherwise."""
        if not self.enabled:
            raise ModelNotReady("this process runs without a model (PROMPTBANK_LOAD_MODEL=false)")
        if not self._ready.wait(timeout):
            raise ModelNotReady("the frozen model is still loading; retry in a few seconds")
        if self._model is None:
            raise ModelNotReady(f"the frozen model failed to load: {self._error}")
        return self._model

    def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run fn(model, *args, **kwargs) on the engine thread and wait for its result."""
        model = self.wait(timeout=0)
        return self._executor.submit(fn, model, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

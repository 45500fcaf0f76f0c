"""The dynamic batcher: one thread owns the model and packs queued rows of any tasks into shared forward passes."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from app.engine.core.mixed import Row, classify_rows, state_rows
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.serving.lane import GenerationLane
from app.engine.serving.planning import BatcherOptions, Company, Pending, Result, take_round
from app.engine.serving.pool import PromptMissing, PromptPool
from app.engine.serving.stats import BatchCounters
from app.threads import ThreadBudget, enter

log = logging.getLogger(__name__)

__all__ = ["Batcher", "BatcherClosed", "BatcherOptions", "QueueFull", "QueueTimeout", "RequestCancelled", "Result"]


class QueueFull(RuntimeError):
    """The queue holds max_queue_rows already; the caller should retry later."""


class QueueTimeout(RuntimeError):
    """A request waited in the queue past its deadline and was dropped before running."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down."""


class RequestCancelled(RuntimeError):
    """The request's cancel event was set (its client went away) before its rows were computed."""


class Batcher:
    """Queue of inference requests served by one engine thread in mixed-task batches.

    Classification and embedding rows are computed in a round's mixed pass. Generation rows join one running
    decode batch (continuous batching, lane.GenerationLane): between any two decode steps the engine
    takes what has arrived, computes its classification rows and lets its generation rows join, so a short
    request never waits for a long generation to end; a finished row leaves at once.

    Locking: every field below `_cond` is read and written under it, except _free_since, _round_seconds and
    _round_rows, which only the engine thread touches; the engine thread releases the lock while the model runs,
    so submit() never waits for a forward pass.
    """

    def __init__(self, frozen: FrozenModel, pool: PromptPool, options: BatcherOptions | None = None) -> None:
        self.frozen, self.pool = frozen, pool
        self.options = options or BatcherOptions()
        self._cond = threading.Condition()
        self._heap: list[Pending] = []
        self._queued_rows = 0
        self._arrivals = itertools.count()
        self._closed = False
        self._discards: set[int] = set()
        self._free_since = 0.0  # monotonic time the engine thread finished its last round
        self._last_arrival = 0.0  # monotonic time of the latest submit()
        self._round_seconds = 0.0  # compute time of the last round
        self._round_rows = 1  # rows the last round took
        self._thread = threading.Thread(target=self._run, name="promptbank-batcher", daemon=True)
        self._counters = BatchCounters()
        # Engine thread only: the running decode batch, and generation rows waiting for room in it.
        self._lane = GenerationLane(
            frozen, max_batch_rows=self.options.max_batch_rows, max_batch_tokens=self.options.max_batch_tokens
        )

    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop taking requests, fail the queued ones, and end the engine thread after its current batch."""
        with self._cond:
            self._closed = True
            pending, self._heap = self._heap, []
            self._queued_rows = 0
            self._cond.notify_all()
        for item in pending:
            if item.future.set_running_or_notify_cancel():  # not one its caller cancelled already
                item.future.set_exception(BatcherClosed("the service is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def discard(self, prompt_id: int) -> None:
        """Forget a prompt's cached keys/values (it was deleted); applied by the engine thread before its next batch."""
        with self._cond:
            self._discards.add(prompt_id)
            self._cond.notify()

    def missing(self, prompt_ids: Iterable[int]) -> set[int]:
        """The prompts among these the pool lacks now: a caller reads their segments and submits them with its rows.
        (One pooled now may still be evicted before its round: the request then fails with PromptMissing.)"""
        return {prompt_id for prompt_id in prompt_ids if prompt_id not in self.pool}

    def submit(
        self,
        rows: list[Row],
        *,
        prompts: Mapping[int, Segments] | None = None,
        priority: int = 0,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Future[Result]:
        """Queue rows (of any tasks and methods); the future gives one result per row, in order. A request whose
        cancel event is set before its round is dropped (RequestCancelled); rows carrying the event stop
        decoding at their next step.

        prompts: the segments of the rows' prompts that the pool lacks (see missing()), read by the caller. A
        prompt neither pooled nor given is refused here with PromptMissing, never served without its prompt.
        Runs on the caller's thread and tokenises each row once, so the engine thread only computes.
        """
        future: Future[Result] = Future()
        if not rows:
            future.set_result([])
            return future
        given = prompts or {}
        lacking = self.missing(dict.fromkeys(row.prompt_id for row in rows))
        absent = sorted(lacking - given.keys())
        if absent:
            raise PromptMissing(absent)
        rows = [row.tokenized(self.frozen) for row in rows]
        now = time.monotonic()
        item = Pending(
            sort_key=(-priority, next(self._arrivals)),
            rows=rows,
            tokens=sum(len(row.ids) for row in rows),
            enqueued=now,
            deadline=None if timeout is None else now + timeout,
            future=future,
            loaded={prompt_id: given[prompt_id] for prompt_id in lacking},
            cancel=cancel,
        )
        with self._cond:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            if self._queued_rows + len(rows) > self.options.max_queue_rows:
                self._counters.rejected += 1
                raise QueueFull(f"{self._queued_rows} rows are queued (limit {self.options.max_queue_rows})")
            heapq.heappush(self._heap, item)
            self._queued_rows += len(rows)
            self._last_arrival = now
            self._cond.notify()
        return future

    # -- the engine thread -----------------------------------------------------------------------------------

    def _take(self, wait: bool = True) -> list[Pending] | None:
        """Wait for work and for company (planning.Company), then pop a round's worth by priority; None once
        closed. wait False (generation rows are decoding): take what is queued now, [] when nothing is."""
        with self._cond:
            while wait and not self._heap and not self._closed:
                self._apply_discards()
                self._cond.wait()
            if self._closed:
                return None
            self._apply_discards()
            if not self._heap:
                return []
            ready = time.monotonic()  # the engine is free and has work: from here on it waits for company
            first = min(item.enqueued for item in self._heap)
            company = Company.plan(self.options, first, self._free_since, self._round_seconds, self._round_rows)
            while wait and not self._closed and sum(i.tokens for i in self._heap) < self.options.max_batch_tokens:
                left = company.left(
                    time.monotonic(),
                    queued_rows=self._queued_rows,
                    last_arrival=self._last_arrival,
                    free_since=self._free_since,
                )
                if left <= 0:
                    break
                self._cond.wait(left)
            self._counters.company_ms.append((time.monotonic() - ready) * 1000)
            taken = take_round(self._heap, self.options, self.pool.capacity)
            self._queued_rows -= sum(len(item.rows) for item in taken)
            return taken

    def _apply_discards(self) -> None:
        # Called with _cond held, on the engine thread: the only thread that touches the pool's entries.
        for prompt_id in self._discards:
            self.pool.discard(prompt_id)
        self._discards.clear()

    def _run(self) -> None:
        if self.options.threads is not None:
            enter(ThreadBudget(self.options.threads))
        while True:
            taken = self._take(wait=not self._lane.busy)
            if taken is None:
                self._fail_decoding(BatcherClosed("the service is shutting down"))
                return
            started = time.monotonic()
            live = []
            for item in taken:
                # Running from here on, so the caller can no longer cancel the future under us; one it cancelled
                # already (its client left, or its deadline passed while queued) is skipped.
                if not item.future.set_running_or_notify_cancel():
                    with self._cond:
                        self._counters.cancelled += 1
                elif item.deadline is not None and started > item.deadline:
                    item.future.set_exception(QueueTimeout("the request waited in the queue past its timeout"))
                    with self._cond:
                        self._counters.timed_out += 1
                elif item.cancel is not None and item.cancel.is_set():
                    item.future.set_exception(RequestCancelled("the request was cancelled before its round"))
                    with self._cond:
                        self._counters.cancelled += 1
                else:
                    live.append(item)
            if live:
                self._serve(live, started)
            if self._lane.busy:
                self._decode_step()
            if taken:
                self._round_seconds = time.monotonic() - started
                self._round_rows = sum(len(item.rows) for item in taken)
            self._free_since = time.monotonic()

    def _serve(self, items: list[Pending], started: float) -> None:
        """Compute a round's classification and embedding rows; queue its generation rows to join the decode."""
        self.pool.stage({prompt_id: prompt for item in items for prompt_id, prompt in item.loaded.items()})
        rows = [row for item in items for row in item.rows]
        try:
            results = self._compute(rows)
            generating = [i for i, row in enumerate(rows) if self._generates(row)]
            served = self.pool.get_many(sorted({rows[i].prompt_id for i in generating})) if generating else {}
        except PromptMissing as missing:
            # Evicted between its request's submit and this round: those requests go back to their callers,
            # which submit again (reading the prompt off this thread); the others are served now.
            lost = set(missing.prompt_ids)
            keep = [item for item in items if not lost & {row.prompt_id for row in item.rows}]
            for item in items:
                if item not in keep:
                    item.future.set_exception(missing)
            if keep and len(keep) < len(items):
                self._serve(keep, started)
            return
        except Exception as exc:  # a failed batch fails its requests, never the engine thread
            log.exception("inference batch of %d rows failed", len(rows))
            with self._cond:
                self._counters.failed += len(items)
            for item in items:
                item.future.set_exception(exc)
            return
        with self._cond:
            self._counters.record_round(len(rows), ((started - item.enqueued) * 1000 for item in items))
        offset = 0
        for item in items:
            item.results = results[offset : offset + len(item.rows)]
            for index, row in enumerate(item.rows):
                if self._generates(row):
                    self._lane.queue(served[row.prompt_id], row, (item, index))
                    item.outstanding += 1
            offset += len(item.rows)
            if item.outstanding == 0:
                item.future.set_result(item.results)

    @staticmethod
    def _generates(row: Row) -> bool:
        return row.pooling is None and row.spec.kind == "generation"

    def _decode_step(self) -> None:
        """Let waiting generation rows join (as many as fit), then advance every decoding row by one token."""
        try:
            finished = self._lane.step()
        except Exception as exc:  # a failed step fails the requests decoding, never the engine thread
            log.exception("decode step of %d rows failed", self._lane.decoding_rows)
            self._fail_decoding(exc)
            return
        for (item, index), text in finished:
            item.results[index] = text
            item.outstanding -= 1
            if item.outstanding == 0:
                item.future.set_result(item.results)

    def _fail_decoding(self, error: Exception) -> None:
        """Fail every request with a row decoding or waiting to join, and start an empty decode batch."""
        items = {id(item): item for item, _ in self._lane.clear()}
        with self._cond:
            self._counters.failed += len(items)
        for item in items.values():
            if not item.future.done():
                item.future.set_exception(error)

    def _compute(self, rows: list[Row]) -> Result:
        """Classification rows in one mixed pass, embeddings in another; in order (generation rows: None here)."""
        results: Result = [None] * len(rows)
        budget = self.options.max_batch_tokens
        work: list[tuple[Callable[[Row], bool], Callable[..., list[Any]]]] = [
            (lambda row: row.pooling is None and row.spec.kind == "classification", classify_rows),
            (lambda row: row.pooling is not None, state_rows),
        ]
        for wanted, run in work:
            indices = [i for i, row in enumerate(rows) if wanted(row)]
            if indices:
                outputs = run(self.frozen, self.pool, [rows[i] for i in indices], max_batch_tokens=budget)
                for i, output in zip(indices, outputs, strict=True):
                    results[i] = output.float().cpu().tolist() if rows[i].pooling else output
        return results

    # -- observability -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for /v1/stats: queue, batch sizes, queue time percentiles, pool."""
        with self._cond:
            stats: dict[str, Any] = {
                "queued_requests": len(self._heap),
                "queued_rows": self._queued_rows,
                "max_queue_rows": self.options.max_queue_rows,
                **self._counters.snapshot(),
            }
        # Read off the engine thread without its lock: a count of a moment ago, enough for a gauge.
        stats["decoding_rows"] = self._lane.decoding_rows
        stats["joining_rows"] = self._lane.joining_rows
        stats["pool"] = self.pool.stats()
        return stats

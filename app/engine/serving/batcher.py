"""The dynamic batcher: one thread owns the model and packs queued rows of any tasks into shared forward passes."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.engine.core.decode import DecodeBatch, Decoding
from app.engine.core.mixed import Row, classify_rows, state_rows
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments, ServedPrompt
from app.engine.core.text import render
from app.engine.serving.pool import PromptMissing, PromptPool
from app.engine.serving.stats import BatchCounters
from app.threads import Budget, enter

log = logging.getLogger(__name__)

Result = list[Any]  # per row: dict label -> probability (classification), str (generation), list[float] (embedding)


class QueueFull(RuntimeError):
    """The queue holds max_queue_rows already; the caller should retry later."""


class QueueTimeout(RuntimeError):
    """A request waited in the queue past its deadline and was dropped before running."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down."""


class RequestCancelled(RuntimeError):
    """The request's cancel event was set (its client went away) before its rows were computed."""


@dataclass(frozen=True)
class BatcherOptions:
    max_batch_tokens: int = 4096  # padded positions (rows x longest row) per forward pass
    # A round starts once no request has arrived for max_wait_ms (or its rows fill max_batch_tokens), and waits
    # at most max(max_wait_ms, wait_share x the previous round's compute time) in all: see Batcher._take.
    max_wait_ms: float = 2.0
    # At most this share of throughput goes to waiting for the clients a round answered, so that they get into
    # the next round instead of making the engine alternate small and large rounds; 0: wait max_wait_ms at most.
    wait_share: float = 0.1
    max_queue_rows: int = 4096  # beyond this, submit() refuses (bounded memory under overload)
    max_batch_rows: int = 256  # rows gathered per round (the engine splits them further by token budget)
    threads: int | None = None  # the engine thread's PyTorch threads (app/threads.py); None: leave as it is


@dataclass(order=True)
class _Pending:
    sort_key: tuple[int, int]  # (-priority, arrival number): higher priority first, then first come
    rows: list[Row] = field(compare=False)
    tokens: int = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(compare=False)
    future: Future[Result] = field(compare=False)
    loaded: dict[int, Segments] = field(compare=False, default_factory=dict)  # prompts missing from the pool
    cancel: threading.Event | None = field(compare=False, default=None)
    # Filled as rows finish (generation rows finish at different decode steps); the future is set when none is left.
    results: list[Any] = field(compare=False, default_factory=list)
    outstanding: int = field(compare=False, default=0)


class Batcher:
    """Queue of inference requests served by one engine thread in mixed-task batches.

    Classification and embedding rows are computed in a round's mixed pass. Generation rows join one running
    decode batch (continuous batching, app/engine/core/decode.DecodeBatch): between any two decode steps the engine
    takes what has arrived, computes its classification rows and lets its generation rows join, so a short
    request never waits for a long generation to end; a finished row leaves at once.

    Locking: every field below `_cond` is read and written under it, except _free_since, _round_seconds and
    _round_rows, which only the engine thread touches; the engine thread releases the lock while the model runs,
    so submit() never waits for a forward pass.
    """

    def __init__(
        self,
        frozen: FrozenModel,
        pool: PromptPool,
        load: Callable[[int], Segments],
        options: BatcherOptions | None = None,
    ) -> None:
        self.frozen, self.pool, self.load = frozen, pool, load
        self.options = options or BatcherOptions()
        self._cond = threading.Condition()
        self._heap: list[_Pending] = []
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
        self._decoding = DecodeBatch(frozen)
        self._joining: deque[tuple[ServedPrompt, Decoding, tuple[_Pending, int]]] = deque()

    def start(self) -> None:
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

    def submit(
        self,
        rows: list[Row],
        *,
        priority: int = 0,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Future[Result]:
        """Queue rows (of any tasks and methods); the future gives one result per row, in order. A request whose
        cancel event is set before its round is dropped (RequestCancelled); rows carrying the event stop
        decoding at their next step.

        Runs on the caller's thread: tokenises each row once, and reads the prompts the pool lacks (load may read
        the database and raise for an unreadable prompt), so the engine thread only computes.
        """
        future: Future[Result] = Future()
        if not rows:
            future.set_result([])
            return future
        rows = [row.tokenized(self.frozen) for row in rows]
        tokens = sum(len(row.ids) for row in rows)
        loaded = {
            prompt_id: self.load(prompt_id)
            for prompt_id in dict.fromkeys(row.prompt_id for row in rows)
            if prompt_id not in self.pool
        }
        now = time.monotonic()
        item = _Pending(
            sort_key=(-priority, next(self._arrivals)),
            rows=rows,
            tokens=tokens,
            enqueued=now,
            deadline=None if timeout is None else now + timeout,
            future=future,
            loaded=loaded,
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

    def _take(self, wait: bool = True) -> list[_Pending] | None:
        """Wait for work and for company, then pop a batch's worth by priority; None once closed. wait False
        (generation rows are decoding): take what is queued now, [] when nothing is, without waiting.

        Company: the round starts once no request has arrived for max_wait_ms, counted from the later of the last
        arrival and the end of the previous round, and as many rows are queued as the previous round served (its
        clients are likely to send again: closed-loop clients over HTTP come back spread over tens of ms); or
        when the queued rows fill max_batch_tokens; and at the latest max(max_wait_ms, wait_share x the previous
        round's compute time) after the later of the first queued arrival and the end of the previous round.
        An engine idle for longer than that expects no one. Measured under 32 closed-loop clients in-process: a
        fixed 2 ms window from the first arrival gave alternating rounds of 5 and 27 rows instead of 32.
        """
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
            quiet = self.options.max_wait_ms / 1000
            first = min(item.enqueued for item in self._heap)
            longest = max(quiet, self.options.wait_share * self._round_seconds)
            cap = max(first, self._free_since) + longest
            expected = self._round_rows if first <= self._free_since + longest else 1
            expected = min(expected, self.options.max_batch_rows)
            while wait and not self._closed and sum(i.tokens for i in self._heap) < self.options.max_batch_tokens:
                now = time.monotonic()
                if self._queued_rows >= expected:
                    left = min(cap, max(self._last_arrival, self._free_since) + quiet) - now
                else:
                    left = cap - now
                if left <= 0:
                    break
                self._cond.wait(left)
            self._counters.company_ms.append((time.monotonic() - ready) * 1000)
            taken: list[_Pending] = []
            rows = tokens = 0
            prompts: set[int] = set()
            while self._heap:
                head = self._heap[0]
                more_prompts = prompts | {row.prompt_id for row in head.rows}
                over = rows + len(head.rows) > self.options.max_batch_rows
                over = over or tokens + head.tokens > self.options.max_batch_tokens * 4
                # every prompt of a round must fit in the pool at once
                over = over or len(more_prompts) > self.pool.capacity
                if taken and over:
                    break
                prompts = more_prompts
                heapq.heappop(self._heap)
                taken.append(head)
                rows += len(head.rows)
                tokens += head.tokens
            self._queued_rows -= rows
            return taken

    def _apply_discards(self) -> None:
        # Called with _cond held, on the engine thread: the only thread that touches the pool's entries.
        for prompt_id in self._discards:
            self.pool.discard(prompt_id)
        self._discards.clear()

    def _run(self) -> None:
        if self.options.threads is not None:
            enter(Budget(self.options.threads))
        while True:
            taken = self._take(wait=not (self._decoding.active or self._joining))
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
            if self._decoding.active or self._joining:
                self._decode_step()
            if taken:
                self._round_seconds = time.monotonic() - started
                self._round_rows = sum(len(item.rows) for item in taken)
            self._free_since = time.monotonic()

    def _serve(self, items: list[_Pending], started: float) -> None:
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
                    decoding = Decoding(
                        render(row.spec.template, row.text),
                        row.ids,
                        row.max_new_tokens,
                        row.stop,
                        row.cancel,
                        row.on_progress,
                    )
                    self._joining.append((served[row.prompt_id], decoding, (item, index)))
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
            finished = self._decoding.cancel_finished()
            room = self.options.max_batch_rows - self._decoding.active
            joining: list[tuple[ServedPrompt, Decoding, tuple[_Pending, int]]] = []
            tokens = 0
            while self._joining and len(joining) < room:
                served, decoding, tag = self._joining[0]
                cost = served.length + served.extra_width + len(decoding.input_ids)
                if joining and tokens + cost > self.options.max_batch_tokens:
                    break  # the rest join at the next step: one prefill stays within the token budget
                joining.append(self._joining.popleft())
                tokens += cost
            if joining:
                finished += self._decoding.admit(*(list(part) for part in zip(*joining, strict=True)))
            finished += self._decoding.step()
        except Exception as exc:  # a failed step fails the requests decoding, never the engine thread
            log.exception("decode step of %d rows failed", self._decoding.active)
            self._fail_decoding(exc)
            return
        for (item, index), text in finished:
            item.results[index] = text
            item.outstanding -= 1
            if item.outstanding == 0:
                item.future.set_result(item.results)

    def _fail_decoding(self, error: Exception) -> None:
        """Fail every request with a row decoding or waiting to join, and start an empty decode batch."""
        items = {id(item): item for *_, (item, _) in self._joining}
        items.update({id(entry.tag[0]): entry.tag[0] for entry in self._decoding.rows})
        self._joining.clear()
        self._decoding = DecodeBatch(self.frozen)
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
        stats["decoding_rows"] = self._decoding.active
        stats["joining_rows"] = len(self._joining)
        stats["pool"] = self.pool.stats()
        return stats

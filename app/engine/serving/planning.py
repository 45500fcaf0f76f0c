"""Planning a round: its budgets, how long it waits for company, which queued requests it takes, which generation
rows join the decode batch.

Pure arithmetic over the queue and a few clock readings; the batcher (batcher.py) holds the lock, the clock and
the thread, and calls these.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.engine.core.mixed import Row
from app.engine.core.segments import Segments

Result = list[Any]  # per row: dict label -> probability (classification), str (generation), list[float] (embedding)


@dataclass(frozen=True)
class BatcherOptions:
    max_batch_tokens: int = 4096  # padded positions (rows x longest row) per forward pass
    # A round starts once no request has arrived for max_wait_ms (or its rows fill max_batch_tokens), and waits
    # at most max(max_wait_ms, wait_share x the previous round's compute time) in all: see Company.
    max_wait_ms: float = 2.0
    # At most this share of throughput goes to waiting for the clients a round answered, so that they get into
    # the next round instead of making the engine alternate small and large rounds; 0: wait max_wait_ms at most.
    wait_share: float = 0.1
    max_queue_rows: int = 4096  # beyond this, submit() refuses (bounded memory under overload)
    max_batch_rows: int = 256  # rows gathered per round (the engine splits them further by token budget)
    threads: int | None = None  # the engine thread's PyTorch threads (app/threads.py); None: leave as it is


@dataclass(order=True)
class Pending:
    """One submitted request in the queue."""

    sort_key: tuple[int, int]  # (-priority, arrival number): higher priority first, then first come
    rows: list[Row] = field(compare=False)
    tokens: int = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(compare=False)
    future: Future[Result] = field(compare=False)
    loaded: dict[int, Segments] = field(compare=False, default_factory=dict)  # prompts the pool lacked at submit
    cancel: threading.Event | None = field(compare=False, default=None)
    # Filled as rows finish (generation rows finish at different decode steps); the future is set when none is left.
    results: list[Any] = field(compare=False, default_factory=list)
    outstanding: int = field(compare=False, default=0)


@dataclass(frozen=True)
class Company:
    """How long a round waits for company once the engine is free and has work.

    The round starts once no request has arrived for `quiet` seconds, counted from the later of the last arrival
    and the end of the previous round, and as many rows are queued as the previous round served (its clients are
    likely to send again: closed-loop clients over HTTP come back spread over tens of ms); or when the queued rows
    fill max_batch_tokens (the batcher's check); and at the latest at `cap`: max(max_wait_ms, wait_share x the
    previous round's compute time) after the later of the first queued arrival and the end of the previous round.
    An engine idle for longer than that expects no one. Measured under 32 closed-loop clients in-process: a fixed
    2 ms window from the first arrival gave alternating rounds of 5 and 27 rows instead of 32.
    """

    quiet: float  # seconds without an arrival that start a round which has its expected rows
    cap: float  # monotonic time by which the round starts whatever has arrived
    expected: int  # rows the round waits for before a quiet gap may start it

    @classmethod
    def plan(
        cls, options: BatcherOptions, first: float, free_since: float, round_seconds: float, round_rows: int
    ) -> Company:
        """The waiting rule for a round whose first queued request arrived at `first`, the previous round having
        ended at `free_since` (monotonic seconds) after `round_seconds` of compute for `round_rows` rows."""
        quiet = options.max_wait_ms / 1000
        longest = max(quiet, options.wait_share * round_seconds)
        expected = round_rows if first <= free_since + longest else 1
        return cls(quiet=quiet, cap=max(first, free_since) + longest, expected=min(expected, options.max_batch_rows))

    def left(self, now: float, *, queued_rows: int, last_arrival: float, free_since: float) -> float:
        """Seconds the round may still wait for company; <= 0: start now."""
        if queued_rows >= self.expected:
            return min(self.cap, max(last_arrival, free_since) + self.quiet) - now
        return self.cap - now


def take_round(heap: list[Pending], options: BatcherOptions, pool_capacity: int) -> list[Pending]:
    """Pop queued requests by priority while the round stays within its budgets (at least one request).

    A round holds at most max_batch_rows rows and four passes' worth of tokens (mixed passes split it further by
    max_batch_tokens), and never more distinct prompts than the pool holds at once.
    """
    taken: list[Pending] = []
    rows = tokens = 0
    prompts: set[int] = set()
    while heap:
        head = heap[0]
        more_prompts = prompts | {row.prompt_id for row in head.rows}
        over = rows + len(head.rows) > options.max_batch_rows
        over = over or tokens + head.tokens > options.max_batch_tokens * 4
        over = over or len(more_prompts) > pool_capacity
        if taken and over:
            break
        prompts = more_prompts
        heapq.heappop(heap)
        taken.append(head)
        rows += len(head.rows)
        tokens += head.tokens
    return taken


def joining_count(costs: Iterable[int], *, room: int, max_batch_tokens: int) -> int:
    """How many waiting generation rows (their prefill costs, in queue order) join the decode batch now: as many as
    there is room for, while one prefill stays within the token budget (the first always joins); the rest join
    at a later step."""
    count = tokens = 0
    for cost in costs:
        if count >= room or (count and tokens + cost > max_batch_tokens):
            break
        count += 1
        tokens += cost
    return count

"""What the batcher has done, kept for GET /v1/stats: rounds, rows, refusals, failures and queue times."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

WINDOW = 2048  # the latest rounds and requests that batch-size and queue-time figures describe


@dataclass
class BatchCounters:
    """Counters of one batcher; not thread-safe by itself: the batcher updates and reads it under its lock."""

    batches: int = 0
    rows: int = 0
    max_batch: int = 0
    rejected: int = 0
    timed_out: int = 0
    cancelled: int = 0
    failed: int = 0
    queue_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    company_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # a free engine's wait per round

    def record_round(self, rows: int, queue_ms: Iterable[float]) -> None:
        """A round served `rows` rows to requests that had queued for queue_ms each."""
        self.batches += 1
        self.rows += rows
        self.max_batch = max(self.max_batch, rows)
        self.batch_sizes.append(rows)
        self.queue_ms.extend(queue_ms)

    def snapshot(self) -> dict[str, Any]:
        """The figures of GET /v1/stats' engine section (queue state and pool aside)."""
        queue_ms = sorted(self.queue_ms)
        sizes = list(self.batch_sizes)
        company = sorted(self.company_ms)
        return {
            "batches": self.batches,
            "rows": self.rows,
            "max_batch_rows": self.max_batch,
            "mean_batch_rows": (sum(sizes) / len(sizes)) if sizes else None,
            "rejected_requests": self.rejected,
            "timed_out_requests": self.timed_out,
            "cancelled_requests": self.cancelled,
            "failed_requests": self.failed,
            "queue_ms_p50": percentile(queue_ms, 0.50),
            "queue_ms_p99": percentile(queue_ms, 0.99),
            # how long the free engine waited for company before each round: what the batching policy costs
            "wait_ms_p50": percentile(company, 0.50),
            "wait_ms_p99": percentile(company, 0.99),
        }


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of an ascending list (nearest rank), None when it is empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

"""Per-key rate limits: `requests_per_second` with bursts of twice as many, else 429 `rate_limited` with
Retry-After.

Without Redis, a token bucket per key in this process: each API process allows a key the whole rate. With
PROMPTBANK_REDIS_URL, a moving window in Redis that every process shares (the closest of the `limits` library's
strategies to the bucket, see `shared_window`); while Redis does not answer, the process's own buckets decide.
"""

from __future__ import annotations

import math
import threading
import time

from limits import RateLimitItemPerSecond

from app.errors import TooManyRequests
from app.services.shared_limits import SharedLimits


def shared_window(rate: float) -> tuple[int, int]:
    """The moving window that stands in for a bucket of `rate` per second and bursts of 2 x rate: (requests,
    seconds). Redis windows are whole seconds: 2 x rate is rounded down to whole requests per 2 s, and a rate below
    0.5 becomes one request per ceil(1 / rate) s, so the shared limit never allows more than the rate."""
    if rate >= 0.5:
        return int(2 * rate), 2
    return 1, math.ceil(1 / rate)


class RateLimiter:
    """Rate limits by key id, shared through Redis when `shared` is given, else (and while Redis is away) token
    buckets in this process: `rate` requests per second on average, bursts of 2 x rate (at least 1)."""

    def __init__(self, shared: SharedLimits | None = None) -> None:
        self.shared = shared
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, time of the last refill)
        self._lock = threading.Lock()

    def take(self, key_id: int, rate: float, now: float | None = None) -> None:
        """Spend one request of the key's rate, or raise TooManyRequests saying when one will be there."""
        if rate <= 0:
            return
        shared = self.shared
        if shared is not None:
            wait = shared.call(lambda: self._take_shared(shared, key_id, rate))
            if wait is not None:
                if wait > 0:
                    raise self._refusal(rate, wait)
                return
        now = time.monotonic() if now is None else now
        capacity = max(1.0, 2 * rate)
        with self._lock:
            tokens, last = self._buckets.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                raise self._refusal(rate, (1 - tokens) / rate)
            self._buckets[key_id] = (tokens - 1, now)

    @staticmethod
    def _take_shared(shared: SharedLimits, key_id: int, rate: float) -> float:
        """0 when the request may pass, else the seconds until the window lets one through (two Redis calls)."""
        requests, seconds = shared_window(rate)
        item = RateLimitItemPerSecond(requests, seconds, namespace="rate")
        if shared.moving_window.hit(item, str(key_id)):
            return 0.0
        # the oldest request in the window leaves it at `reset` (Redis keeps wall-clock times, as the window does)
        reset, _ = shared.moving_window.get_window_stats(item, str(key_id))
        return max(reset - time.time(), 0.001)

    @staticmethod
    def _refusal(rate: float, wait: float) -> TooManyRequests:
        return TooManyRequests(f"this key may make {rate:g} requests per second; slow down", retry_after=wait)

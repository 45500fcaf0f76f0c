"""Failed key attempts per client address: past a burst, an address gets 429 for every key it sends until its window
ends, so keys cannot be guessed at the speed of the service. Counted in this process, or with PROMPTBANK_REDIS_URL in
Redis for every API process (a fixed window from the address's first failure, in whole seconds there); while Redis
does not answer, each process counts on its own."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from limits import RateLimitItemPerSecond

from app.errors import TooManyRequests
from app.services.shared_limits import SharedLimits

log = logging.getLogger(__name__)


class FailedKeys:
    """At most `limit` unknown or revoked keys per client address in a window of `window` seconds (from the
    address's first failure); past that, 429 `too_many_failed_keys` until the window ends, valid keys included
    (a key that worked while others are refused would tell a guesser it found one)."""

    MAX_ADDRESSES = 10_000  # beyond this many tracked addresses, ended windows go, then the oldest ones

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedLimits | None = None,
    ) -> None:
        self.limit, self.window, self.clock, self.shared = limit, window, clock, shared
        # Redis expires keys after whole seconds
        self._item = RateLimitItemPerSecond(limit, math.ceil(window), namespace="failed_keys")
        self._lock = threading.Lock()  # identify() runs on the thread pool
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (its window's start, failures in it)

    def check(self, address: str) -> None:
        """Raise TooManyRequests while `address` is over its limit."""
        shared = self.shared
        counted = None if shared is None else shared.call(lambda: self._shared_window(shared, address))
        if counted is not None:
            failures, left = counted
        else:
            with self._lock:
                start, failures = self._windows.get(address, (0.0, 0))
                left = start + self.window - self.clock()
        if failures >= self.limit and left > 0:
            raise TooManyRequests(
                f"{failures} unknown or revoked keys came from this address within {self.window:g} s; "
                f"retry in {math.ceil(left)} s with a valid key",
                code="too_many_failed_keys",
                retry_after=left,
            )

    def _shared_window(self, shared: SharedLimits, address: str) -> tuple[int, float]:
        """The address's failures in its window in Redis, and the seconds left of that window."""
        key = self._item.key_for(address)
        failures = shared.storage.get(key)
        if failures < self.limit:  # the usual case: one Redis call
            return failures, 0.0
        return failures, shared.storage.get_expiry(key) - time.time()

    def failed(self, address: str) -> None:
        """Count one unknown or revoked key from `address`, and log it (never the key)."""
        shared = self.shared
        counted = None
        if shared is not None:
            key, seconds = self._item.key_for(address), self._item.get_expiry()
            counted = shared.call(lambda: shared.storage.incr(key, seconds))
        if counted is None:
            now = self.clock()
            with self._lock:
                start, failures = self._windows.pop(address, (now, 0))
                if now - start >= self.window:
                    start, failures = now, 0
                self._windows[address] = (start, failures + 1)
                if len(self._windows) > self.MAX_ADDRESSES:
                    self._prune(now)
            counted = failures + 1
        log.warning(
            "unknown or revoked key from %s (%d in this window, limit %d)",
            address,
            counted,
            self.limit,
            extra={"client": address},
        )

    def _prune(self, now: float) -> None:
        for address, (start, _) in list(self._windows.items()):
            if now - start >= self.window:
                del self._windows[address]
        while len(self._windows) > self.MAX_ADDRESSES:  # insertion order: the least recently failed first
            del self._windows[next(iter(self._windows))]

"""Failed key attempts per client address: past a burst, an address gets 429 for every key it sends until its window
ends, so keys cannot be guessed at the speed of the service. Per process (another issue moves counters to Redis)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from app.errors import TooManyRequests

log = logging.getLogger(__name__)


class FailedKeys:
    """At most `limit` unknown or revoked keys per client address in a window of `window` seconds (from the
    address's first failure); past that, 429 `too_many_failed_keys` until the window ends, valid keys included
    (a key that worked while others are refused would tell a guesser it found one)."""

    MAX_ADDRESSES = 10_000  # beyond this many tracked addresses, ended windows go, then the oldest ones

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._lock = threading.Lock()  # identify() runs on the thread pool
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (its window's start, failures in it)

    def check(self, address: str) -> None:
        """Raise TooManyRequests while `address` is over its limit."""
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

    def failed(self, address: str) -> None:
        """Count one unknown or revoked key from `address`, and log it (never the key)."""
        now = self.clock()
        with self._lock:
            start, failures = self._windows.pop(address, (now, 0))
            if now - start >= self.window:
                start, failures = now, 0
            self._windows[address] = (start, failures + 1)
            if len(self._windows) > self.MAX_ADDRESSES:
                self._prune(now)
        log.warning(
            "unknown or revoked key from %s (%d in this window, limit %d)",
            address,
            failures + 1,
            self.limit,
            extra={"client": address},
        )

    def _prune(self, now: float) -> None:
        for address, (start, _) in list(self._windows.items()):
            if now - start >= self.window:
                del self._windows[address]
        while len(self._windows) > self.MAX_ADDRESSES:  # insertion order: the least recently failed first
            del self._windows[next(iter(self._windows))]

"""The Redis behind the limits every API replica shares (PROMPTBANK_REDIS_URL), through the `limits` library.

Redis only holds counters, so its absence must not take requests down with it: while it does not answer, each
process decides alone with its own in-process limits (fail open: N replicas then allow up to N times a key's rate)
and logs one warning, then tries Redis again every RETRY_SECONDS. The counters of that outage (errors, decisions
taken alone) are served by GET /metrics, whether Redis answers by GET /healthz.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

# A limit check waits this long for Redis at most: a request is slowed by at most this when Redis stops answering
# (then not at all for RETRY_SECONDS).
TIMEOUT_SECONDS = 0.25
RETRY_SECONDS = 5.0


def redacted(url: str) -> str:
    """The URL's scheme, host and port, without a password: what logs may say about where Redis is."""
    parts = urlsplit(url)
    if parts.hostname is None:  # a unix socket
        return f"{parts.scheme}://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


class SharedLimits:
    """A connection to Redis (limits' RedisStorage, keys under `prefix`) and whether it answers; thread-safe."""

    def __init__(self, url: str, prefix: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = redacted(url)
        self.storage = RedisStorage(
            url,
            key_prefix=prefix,
            wrap_exceptions=True,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
        )
        self.moving_window = MovingWindowRateLimiter(self.storage)
        self.fixed_window = FixedWindowRateLimiter(self.storage)
        self.clock = clock
        self.errors = 0  # Redis calls that failed
        self.alone = 0  # limit checks this process decided on its own because Redis was away
        self._retry_at: float | None = None  # while set, Redis is away and is not asked before this time
        self._lock = threading.Lock()

    @property
    def up(self) -> bool:
        """Whether the last call to Redis worked (true before the first)."""
        return self._retry_at is None

    def call(self, work: Callable[[], T]) -> T | None:
        """What `work` (calls to Redis) returns, or None when Redis is away: the caller then decides alone."""
        with self._lock:
            if self._retry_at is not None and self.clock() < self._retry_at:
                self.alone += 1
                return None
        try:
            result = work()
        except (StorageError, RedisError, OSError) as error:
            cause = error.storage_error if isinstance(error, StorageError) else error
            with self._lock:
                self.errors += 1
                self.alone += 1
                was_up = self._retry_at is None
                self._retry_at = self.clock() + RETRY_SECONDS
            if was_up:
                log.warning(
                    "shared limits: Redis at %s does not answer (%s: %s); each API process limits on its own "
                    "until it does (retrying every %g s)",
                    self.where,
                    type(cause).__name__,
                    cause,
                    RETRY_SECONDS,
                )
            return None
        if self._retry_at is not None:
            with self._lock:
                self._retry_at = None
            log.warning("shared limits: Redis at %s answers again; limits are shared again", self.where)
        return result

    def ping(self) -> bool:
        """Whether Redis answers a PING now (for /healthz; it does not change `up`)."""
        return bool(self.storage.check())

    def close(self) -> None:
        self.storage.storage.close()  # the redis client and its connections

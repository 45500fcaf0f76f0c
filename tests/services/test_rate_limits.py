"""Rate limits shared through Redis (app/services/rate_limits.py, app/services/shared_limits.py), and what happens
while Redis is away."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from app.errors import TooManyRequests
from app.services.rate_limits import RateLimiter, shared_window
from app.services.shared_limits import RETRY_SECONDS, SharedLimits
from tests.redis_server import REDIS_URL, PrivateRedis, free_port, key_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    with key_prefix() as prefix:
        yield prefix


def passed(limiter: RateLimiter, key_id: int, rate: float, times: int) -> list[bool]:
    """Whether each of `times` requests in a row got through."""
    answers = []
    for _ in range(times):
        try:
            limiter.take(key_id, rate)
            answers.append(True)
        except TooManyRequests:
            answers.append(False)
    return answers


def test_the_shared_window_allows_the_bursts_of_the_bucket_and_never_more_than_the_rate() -> None:
    assert shared_window(20) == (40, 2)
    assert shared_window(0.5) == (1, 2)
    assert shared_window(0.3) == (1, 4)  # one request per 4 s: 0.25 per second, not 0.3
    assert shared_window(2.7) == (5, 2)
    for rate in (0.01, 0.1, 0.3, 0.5, 0.7, 1, 1.5, 2.7, 20, 1000):
        requests, seconds = shared_window(rate)
        assert requests >= 1 and isinstance(seconds, int) and requests / seconds <= rate


def test_two_limiters_on_one_redis_share_a_keys_rate(prefix: str) -> None:
    first, second = RateLimiter(SharedLimits(REDIS_URL, prefix)), RateLimiter(SharedLimits(REDIS_URL, prefix))
    # rate 1: two requests per 2 s, whichever process takes them
    assert [passed(limiter, 7, 1.0, 1)[0] for limiter in (first, second, first, second)] == [True, True, False, False]
    with pytest.raises(TooManyRequests) as refused:
        second.take(7, 1.0)
    assert refused.value.code == "rate_limited" and refused.value.headers == {"Retry-After": "2"}
    assert passed(first, 8, 1.0, 3) == [True, True, False]  # another key has its own window
    alone = RateLimiter(), RateLimiter()  # without Redis each process has its own bucket
    assert [passed(limiter, 7, 1.0, 2) for limiter in alone] == [[True, True], [True, True]]


def test_while_redis_is_away_each_process_limits_alone_until_it_answers_again(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedis(free_port())
    server.start()
    now = [0.0]
    shared = SharedLimits(server.url, prefix, clock=lambda: now[0])
    limiter = RateLimiter(shared)
    try:
        assert passed(limiter, 1, 1.0, 3) == [True, True, False] and shared.up
        server.stop()
        with caplog.at_level(logging.WARNING, logger="app.services.shared_limits"):
            # key 1 spent its shared window, but this process's own bucket decides now: fail open, still limited
            assert passed(limiter, 1, 1.0, 3) == [True, True, False]
        assert not shared.up and shared.errors == 1 and shared.alone == 3  # Redis is not asked again for a while
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "does not answer" in warnings[0] and server.url.rsplit("/", 1)[0] in warnings[0]
        assert not shared.ping()

        server.start()
        assert passed(limiter, 2, 1.0, 1) == [True] and not shared.up  # still within the retry interval
        now[0] += RETRY_SECONDS
        assert passed(limiter, 2, 1.0, 3) == [True, True, False] and shared.up
        assert shared.errors == 1 and shared.ping()
        stored = redis.Redis.from_url(server.url).keys(f"{prefix}:*")
        assert len(stored) == 1 and b"rate/2/" in stored[0]
    finally:
        server.stop()
        shared.close()

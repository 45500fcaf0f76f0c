"""Rate limits and failed-key counts shared through Redis by several API instances (PROMPTBANK_REDIS_URL): two apps
on one database and one Redis, as two replicas behind a load balancer; and an unreachable Redis fails open."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.config import Settings
from tests.api.test_keys import ADMIN_KEY, as_key, new_key
from tests.redis_server import CLOSED_PORT_URL, REDIS_URL, key_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    with key_prefix() as prefix:
        yield prefix


def statuses(clients: list[TestClient], times: int, path: str = "/v1/tasks") -> list[int]:
    """The statuses of `times` requests sent to the clients in turn."""
    return [clients[i % len(clients)].get(path).status_code for i in range(times)]


def metric(client: TestClient, name: str) -> float:
    text = as_key(client, ADMIN_KEY).get("/metrics").text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return values[name]


def test_two_instances_share_a_keys_rate_limit_through_redis(
    client_with: Callable[..., TestClient], prefix: str
) -> None:
    shared = {"admin_key": ADMIN_KEY, "run_worker": False, "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    first, second = client_with(**shared), client_with(**shared)
    admin = as_key(first, ADMIN_KEY)
    split, alone = (new_key(admin, "acme", ["read"], limits={"requests_per_second": 1}) for _ in range(2))
    # rate 1 allows bursts of 2: split across the instances the third request is refused, as on one instance
    assert statuses([as_key(first, split), as_key(second, split)], 4) == [200, 200, 429, 429]
    assert statuses([as_key(first, alone)], 4) == [200, 200, 429, 429]
    refused = as_key(second, split).get("/v1/tasks")
    assert refused.json()["error"]["code"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 2
    assert first.get("/healthz").json()["shared_limits"] == "up"
    assert metric(first, "promptbank_shared_limits_enabled") == 1 and metric(first, "promptbank_shared_limits_up") == 1


def test_without_redis_each_instance_has_its_own_bucket(client_with: Callable[..., TestClient]) -> None:
    first, second = (client_with(admin_key=ADMIN_KEY, run_worker=False) for _ in range(2))
    admin = as_key(first, ADMIN_KEY)
    split, alone = (new_key(admin, "acme", ["read"], limits={"requests_per_second": 0.5}) for _ in range(2))
    assert statuses([as_key(first, alone)], 2) == [200, 429]
    assert statuses([as_key(first, split), as_key(second, split)], 4) == [200, 200, 429, 429]
    assert first.get("/healthz").json()["shared_limits"] == "off"
    assert metric(first, "promptbank_shared_limits_enabled") == 0


def test_failed_keys_from_one_address_are_counted_across_instances(
    client_with: Callable[..., TestClient], prefix: str
) -> None:
    settings = {"admin_key": ADMIN_KEY, "run_worker": False, "failed_key_limit": 2}
    first, second = (client_with(**settings, redis_url=REDIS_URL, redis_key_prefix=prefix) for _ in range(2))
    guessers = [as_key(client, "pb_guess-0000", host="198.51.100.9") for client in (first, second)]
    answers = [guessers[i % 2].get("/v1/tasks") for i in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 429, 429]
    assert answers[-1].json()["error"]["code"] == "too_many_failed_keys"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert as_key(second, ADMIN_KEY, host="198.51.100.10").get("/v1/tasks").status_code == 200


def test_an_unreachable_redis_fails_open_to_each_instances_own_limits(
    client_with: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        client = client_with(admin_key=ADMIN_KEY, run_worker=False, redis_url=CLOSED_PORT_URL)
        key = new_key(as_key(client, ADMIN_KEY), "acme", ["read"], limits={"requests_per_second": 1})
        # served, and still limited: by this instance's own bucket (bursts of 2)
        assert statuses([as_key(client, key)], 3) == [200, 200, 429]
        wrong = as_key(client, "pb_guess-0000", host="198.51.100.9").get("/v1/tasks")
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_key"
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["shared_limits"] == "down"
    assert metric(client, "promptbank_shared_limits_up") == 0
    assert metric(client, "promptbank_shared_limits_errors_total") >= 1
    assert metric(client, "promptbank_shared_limits_local_decisions_total") >= 4
    said = [r.getMessage() for r in caplog.records if r.name.startswith("app.") and "Redis" in r.getMessage()]
    assert said and all("127.0.0.1:1" in line for line in said)
    assert not any("not-a-real-password" in r.getMessage() for r in caplog.records)


def test_a_redis_url_that_is_not_one_refuses_to_start() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(redis_url="secret@cache.internal:6379")
    assert "PROMPTBANK_REDIS_URL takes a Redis URL" in str(refused.value) and "secret" not in str(refused.value)
    assert Settings(redis_url="").redis_url is None  # set empty: unset
    assert Settings(redis_url="rediss://:pw@cache.internal:6380/1").redis_url is not None

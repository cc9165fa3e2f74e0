"""The shared circuit breaker: its state machine on a real Redis with a controlled clock, and the
pipeline skipping a dead provider without calling it, then probing it back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from llmq.resilience.circuit import CircuitBreaker, CircuitPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def client(services: Any) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url)


def _breaker(client: redis.Redis, clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(
        client,
        CircuitPolicy(failure_threshold=3, window_s=10, cooldown_s=5, min_calls=20),
        clock=clock,
    )


def test_opens_after_threshold_within_window_then_half_opens_and_closes(
    client: redis.Redis,
) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    breaker = _breaker(client, clock)
    for _ in range(2):
        breaker.record(link, ok=False, error_code="server_error")
    assert breaker.allow(link) and breaker.state(link) == "closed"
    breaker.record(link, ok=False, error_code="timeout")
    assert breaker.state(link) == "open" and not breaker.allow(link)
    clock.now += 5.1  # cooldown over: exactly one caller gets the probe
    assert breaker.state(link) == "half_open"
    assert breaker.allow(link) is True
    assert breaker.allow(link) is False
    assert _breaker(client, clock).allow(link) is False  # another worker agrees
    breaker.record(link, ok=True)
    assert breaker.state(link) == "closed" and breaker.allow(link)


def test_failed_probe_reopens_for_a_full_cooldown(client: redis.Redis) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    breaker = _breaker(client, clock)
    for _ in range(3):
        breaker.record(link, ok=False, error_code="server_error")
    clock.now += 6
    assert breaker.allow(link)  # the probe
    breaker.record(link, ok=False, error_code="server_error")
    assert breaker.state(link) == "open"
    clock.now += 4.9
    assert not breaker.allow(link)
    clock.now += 0.2
    assert breaker.allow(link)


def test_old_failures_fall_out_of_the_window_and_4xx_never_count(
    client: redis.Redis,
) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    breaker = _breaker(client, clock)
    breaker.record(link, ok=False, error_code="server_error")
    breaker.record(link, ok=False, error_code="server_error")
    clock.now += 11
    breaker.record(link, ok=False, error_code="server_error")
    for code in ("bad_request", "auth_error", "context_too_long", "rate_limited"):
        breaker.record(link, ok=False, error_code=code)
    assert breaker.state(link) == "closed"


def test_redis_down_lets_calls_through() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    breaker = CircuitBreaker(dead, CircuitPolicy())
    assert breaker.allow("openai:gpt-4o-mini") is True
    breaker.record("openai:gpt-4o-mini", ok=False, error_code="server_error")
    assert breaker.unavailable == 2


def test_a_degraded_provider_stays_closed_and_a_failing_one_opens(client: redis.Redis) -> None:
    clock = Clock()
    degraded, failing = (f"openai:m-{uuid.uuid4().hex[:6]}" for _ in range(2))
    breaker = _breaker(client, clock)
    for i in range(60):  # 30% of calls fail: retries handle it, traffic must keep flowing
        clock.now += 0.1
        breaker.record(degraded, ok=i % 10 not in (1, 5, 8), error_code="server_error")
        assert breaker.state(degraded) == "closed", f"opened at call {i}"
    for i in range(30):  # 2 of 3 calls fail: down for practical purposes
        clock.now += 0.1
        breaker.record(failing, ok=i % 3 == 0, error_code="server_error")
        if i < 19:  # below min_calls a mix of results is noise, not an outage
            assert breaker.state(failing) == "closed", f"opened at call {i}"
    assert breaker.state(failing) == "open"


def test_a_success_that_started_before_opening_does_not_close_it(client: redis.Redis) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    breaker = _breaker(client, clock)
    for _ in range(3):
        breaker.record(link, ok=False, error_code="server_error")
    breaker.record(link, ok=True)  # a slow call that was in flight
    assert breaker.state(link) == "open" and not breaker.allow(link)


def test_successes_sent_in_batches_still_count_when_a_failure_is_judged(
    client: redis.Redis,
) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    breaker = _breaker(client, clock)
    assert breaker.allow(link)  # closed: this process now batches its successes
    for _ in range(7):
        breaker.record(link, ok=True)  # the first is sent, six wait for the next flush
    assert client.zcard(f"llmq:cb:{link}:oks") == 1
    for _ in range(3):  # 3 of 10 calls failed: degraded, not down
        breaker.record(link, ok=False, error_code="server_error")
    assert breaker.state(link) == "closed"
    assert client.zcard(f"llmq:cb:{link}:oks") == 7


def test_successes_of_calls_made_before_it_opened_elsewhere_do_not_count(
    client: redis.Redis,
) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    here, elsewhere = _breaker(client, clock), _breaker(client, clock)
    assert here.allow(link)  # closed, as this process will believe for a moment
    for _ in range(3):
        elsewhere.record(link, ok=False, error_code="server_error")
    here.record(link, ok=True)  # sent as a batch: ignored, the circuit is open
    here.record(link, ok=True)
    assert here.state(link) == "open"
    assert client.zcard(f"llmq:cb:{link}:oks") == 0
    clock.now += 5.1  # half-open: the probe's success closes it
    assert elsewhere.allow(link)
    elsewhere.record(link, ok=True)
    assert here.state(link) == "closed"


def test_a_circuit_opened_elsewhere_is_seen_once_the_cached_answer_expires(
    client: redis.Redis,
) -> None:
    clock, link = Clock(), f"openai:m-{uuid.uuid4().hex[:6]}"
    here, elsewhere = _breaker(client, clock), _breaker(client, clock)
    assert here.allow(link)
    for _ in range(3):
        elsewhere.record(link, ok=False, error_code="server_error")
    assert here.allow(link)  # still trusting its "closed" from 0 s ago
    clock.now += CircuitPolicy().allow_cache_s
    assert not here.allow(link)

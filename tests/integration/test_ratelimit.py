"""Shared provider rate limits: the sliding window on a real Redis with a controlled clock, and
four worker processes that together never exceed the limit the fake provider sees."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from sqlalchemy import text

from llmq import store
from llmq.localstack.processes import Stack
from llmq.resilience.ratelimit import Limit, RateLimiter
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript

from ..helpers import submit_batch, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 5_000_000.0

    def __call__(self) -> float:
        return self.now


def test_requests_window_admits_the_limit_then_says_how_long_to_wait(services: Any) -> None:
    clock, link = Clock(), f"openai:rl-{uuid.uuid4().hex[:6]}"
    limiter = RateLimiter(
        redis.Redis.from_url(services.redis_url),
        {link: Limit(requests=3)},
        window_s=10,
        clock=clock,
    )
    assert [limiter.acquire(link, 1) for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 4
    assert limiter.acquire(link, 1) == 6.0  # the oldest call leaves the window in 6 s
    clock.now += 6
    assert limiter.acquire(link, 1) == 0.0
    assert limiter.acquire("openai:unlimited", 10**9) == 0.0


def test_tokens_window_counts_estimated_tokens(services: Any) -> None:
    clock, link = Clock(), f"openai:rl-{uuid.uuid4().hex[:6]}"
    limiter = RateLimiter(
        redis.Redis.from_url(services.redis_url),
        {link: Limit(tokens=100)},
        window_s=60,
        clock=clock,
    )
    assert limiter.acquire(link, 60) == 0.0
    clock.now += 10
    assert limiter.acquire(link, 30) == 0.0
    assert limiter.acquire(link, 30) == 50.0  # must wait for the 60-token call to expire
    clock.now += 50
    assert limiter.acquire(link, 30) == 0.0


def test_redis_down_lets_calls_through() -> None:
    limiter = RateLimiter(
        redis.Redis(port=1, socket_connect_timeout=0.2), {"openai:x": Limit(requests=1)}
    )
    assert limiter.acquire("openai:x", 1) == 0.0 and limiter.unavailable == 1


def test_four_workers_share_one_limit(
    isolated_env: dict[str, str], fake_provider: FakeProviderServer, services: Any
) -> None:
    limit, window, jobs = 5, 3.0, 25
    model = f"limited-{uuid.uuid4().hex[:6]}"
    env = {
        **isolated_env,
        "LLMQ_RATE_WINDOW_S": str(window),
        "LLMQ_RATE_LIMITS": json.dumps({f"openai:{model}": {"requests": limit}}),
    }
    engine = get_engine(env["DATABASE_URL"])
    principal = store.authenticate(engine, store.create_api_key(engine, "rl"))
    assert principal is not None
    fake_provider.set_script(FakeScript(latency_ms=20))
    fake_provider.reset()
    stack = Stack(env=env, log_dir=services.data_dir / "logs-rl")
    for index in range(4):
        stack.start_worker(
            f"rl{index}", queues="llm.high,llm.default,llm.low", concurrency=8, pool="threads"
        )
    try:
        batch_id = submit_batch(
            engine, env, principal.tenant_id, [f"openai:{model}"],
            [f"question {i}" for i in range(jobs)], template="prompt",
        )  # fmt: skip

        def all_done() -> bool:
            batch = store.get_batch(engine, principal.tenant_id, batch_id)
            return batch is not None and batch["counts"]["succeeded"] == jobs

        wait_for(all_done, 120, f"{jobs} rate-limited jobs")
    finally:
        stack.stop()
    # This test's model only: the provider is shared, and another test's worker may call it.
    seen = sorted(fake_provider.stats()["timestamps_by_model"][model])
    with engine.connect() as conn:
        outcomes = conn.execute(
            text("SELECT a.outcome, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
                 "WHERE j.batch_id = :b GROUP BY a.outcome"), {"b": batch_id},
        ).all()  # fmt: skip
    assert dict(outcomes) == {"ok": jobs}  # not one call was wasted on a provider 429
    assert len(seen) == jobs  # and none went unrecorded
    # Admission is limited on the shared clock; arrival at the provider lags admission by the
    # time a worker thread takes to send (tens of ms idle, more on a loaded 2-core machine).
    # With every lag under `lag`, any (window - lag) of arrivals was admitted within one window.
    lag = 1.0
    busiest = max(sum(1 for t in seen if start <= t < start + window - lag) for start in seen)
    assert busiest <= limit
    assert seen[-1] - seen[0] >= (jobs / limit - 1) * window - lag  # it really was throttled

"""Rate limits learned from the provider's headers: the pacing script on a real Redis with a
controlled clock, and real workers against a fake provider with a small limit, learning it with
no LLMQ_RATE_LIMITS (near zero 429s where the same run without adaptive limits gets many)."""

from __future__ import annotations

import uuid
from typing import Any

import redis
from fastapi.testclient import TestClient

from llmq import store
from llmq.api.app import create_app
from llmq.localstack.processes import Stack
from llmq.providers.base import Completion, ProviderError, RateSnapshot, Usage
from llmq.resilience.adaptive import learned_views
from llmq.resilience.ratelimit import PROBE_WAIT_S, Admission, Limit, RateLimiter
from llmq.settings import Settings
from llmq.store.engine import get_engine
from llmq.testing.fake_limits import RateLimits
from llmq.testing.fake_provider import FakeProviderServer, FakeScript

from ..helpers import make_isolated_env, metric_value, submit_batch, wait_for
from .test_cli import _llmq


class Clock:
    def __init__(self) -> None:
        self.now = 7_000_000.0

    def __call__(self) -> float:
        return self.now


def _pair(admission: Admission) -> tuple[bool, float]:
    return admission.admitted, admission.wait_s


def _answer(**rate: Any) -> Completion:
    return Completion("ok", Usage(), "stop", rate=RateSnapshot(**rate))


def test_learned_limit_paces_calls_evenly_and_a_429_blocks_at_once(services: Any) -> None:
    clock, link = Clock(), f"openai:ad-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(services.redis_url)
    limiter = RateLimiter(client, {}, window_s=10, clock=clock, adaptive=True, margin=0.0,
                          accounts={"openai": "acct1"})  # fmt: skip
    # Nothing known yet: one probe call, the others look again shortly.
    assert limiter.admit(link, 100, 2.0).admitted
    assert _pair(limiter.admit(link, 100, 2.0)) == (False, PROBE_WAIT_S)
    # The probe's answer: 10 requests per window, 9 left (the probe itself).
    limiter.learn(link, _answer(requests_limit=10, requests_remaining=9), None)
    waits = [limiter.admit(link, 100, 2.5) for _ in range(4)]
    # One call per window/limit = 1 s, the probe's slot owed first; beyond the horizon: later.
    assert [_pair(a) for a in waits] == [
        (True, 1.0), (True, 2.0), (False, 3.0), (False, 3.0)
    ]  # fmt: skip
    clock.now += 10
    assert limiter.admit(link, 100, 0.0).admitted
    # A 429 with retry-after blocks the link for every worker at once.
    limiter.learn(
        link, None, ProviderError("rate_limited", "slow down", retryable=True, status=429,
                                  rate=RateSnapshot(requests_limit=10, retry_after_s=7.0)),
    )  # fmt: skip
    blocked = limiter.admit(link, 100, 2.0)
    assert not blocked.admitted and blocked.wait_s == 7.0
    # The configured limit stays a ceiling under a larger learned one.
    capped = RateLimiter(client, {link: Limit(requests=2)}, window_s=10, clock=clock,
                         adaptive=True, margin=0.0, accounts={"openai": "acct1"})  # fmt: skip
    clock.now += 20
    assert _pair(capped.admit(link, 1, 20.0)) == (True, 0.0)
    assert _pair(capped.admit(link, 1, 20.0)) == (True, 5.0)  # 2 per 10 s, evenly
    (view,) = [v for v in learned_views(client, clock.now) if v.link == link]
    assert view.account == "acct1" and view.requests_limit == 10


def test_workers_learn_the_limit_from_headers_and_avoid_the_429s(
    services: Any, stack_env: dict[str, str], tmp_path: Any
) -> None:
    window, per_window, jobs = 2.0, 10, 24
    limits = RateLimits(rpm=round(per_window * 60 / window), window_s=window)
    with FakeProviderServer(FakeScript(latency_ms=30, limits=limits)) as fake:
        runs: dict[str, dict[str, Any]] = {}
        stack = Stack(env=stack_env, log_dir=tmp_path)
        try:
            for name, adaptive in (("learned", "true"), ("blind", "false")):
                env = {
                    **make_isolated_env(services, stack_env),
                    "OPENAI_BASE_URL": fake.openai_base_url,
                    "LLMQ_RATE_WINDOW_S": str(window),
                    "LLMQ_ADAPTIVE_RATE_LIMITS": adaptive,
                }
                stack.env = env
                for index in range(2):
                    stack.start_worker(f"{name}{index}", queues="llm.high,llm.default,llm.low",
                                       concurrency=6, pool="threads")  # fmt: skip
                runs[name] = {"env": env, "model": f"{name}-{uuid.uuid4().hex[:6]}"}
            for run in runs.values():
                engine = get_engine(run["env"]["DATABASE_URL"])
                principal = store.authenticate(engine, store.create_api_key(engine, "ad"))
                assert principal is not None
                run["engine"], run["tenant"] = engine, principal.tenant_id
                run["batch"] = submit_batch(
                    engine, run["env"], principal.tenant_id, [f"openai:{run['model']}"],
                    [f"question {i}" for i in range(jobs)], template="prompt",
                )  # fmt: skip

            def counts(run: dict[str, Any]) -> dict[str, int]:
                batch = store.get_batch(run["engine"], run["tenant"], run["batch"])
                assert batch is not None
                return dict(batch["counts"])

            def finished(run: dict[str, Any]) -> bool:
                done = counts(run)
                return done["succeeded"] + done["failed"] == jobs

            wait_for(lambda: all(finished(run) for run in runs.values()), 90, "both batches")
            learned_env = runs["learned"]["env"]
            settings = Settings(
                database_url=learned_env["DATABASE_URL"], redis_url=learned_env["REDIS_URL"]
            )
            with TestClient(create_app(settings)) as client:
                ready = client.get("/readyz").json()
                metrics = client.get("/metrics").text
            shown = _llmq("queues", env=learned_env).stdout.splitlines()
        finally:
            stack.stop()
        by_model = fake.stats()["limits"]["by_model"]
    learned, blind = (by_model[runs[name]["model"]]["rejected"] for name in ("learned", "blind"))
    assert counts(runs["learned"])["succeeded"] == jobs
    assert learned <= 1, f"{learned} calls got 429 with learned limits"
    assert blind >= 5 and blind > 5 * learned, (blind, learned)
    link = f"openai:{runs['learned']['model']}"
    (view,) = [v for v in ready["checks"]["rate_limits"] if v["link"] == link]
    assert view["requests_limit"] == per_window and view["requests_remaining"] is not None
    assert metric_value(metrics, "llmq_rate_limit_learned", link=link, kind="requests") == (
        per_window
    )
    (line,) = [row for row in shown if link in row]
    assert line.startswith(f"rate limit   {link}: requests ") and f"/{per_window} left" in line

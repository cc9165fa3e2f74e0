"""Cost accounting and the budget guard through the pipeline as plain Python: real Postgres and
Redis, the fake provider through the real SDKs, no broker."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from llmq import store
from llmq.cost.budgets import BudgetGuard
from llmq.cost.pricing import load_price_table
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.providers.anthropic_provider import AnthropicProvider
from llmq.providers.local import LocalProvider
from llmq.providers.openai_provider import OpenAIProvider
from llmq.resilience.retry import RetryPolicy
from llmq.store.job_store import PostgresJobStore
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import Services

DOC = (
    "The harbour authority approved a new ferry terminal. It will cost 40 million euros. "
    "Work starts in May. The old terminal closes next year. Ferries will run every hour."
)


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    yield fake_provider
    fake_provider.set_script(FakeScript())


@pytest.fixture()
def tenant(engine: Engine) -> tuple[uuid.UUID, str]:
    name = f"cost-{uuid.uuid4().hex[:8]}"
    principal = store.authenticate(engine, store.create_api_key(engine, name))
    assert principal is not None
    return principal.tenant_id, name


@pytest.fixture()
def rclient(services: Services) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url, socket_timeout=5)


def _exported(name: str, **labels: str) -> float:
    """A counter as this process's /metrics shows it."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _pipeline(
    engine: Engine, fake: FakeProviderServer, budgets: BudgetGuard | None = None
) -> Pipeline:
    timeouts = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0}
    return Pipeline(
        PostgresJobStore(engine),
        {
            "openai": OpenAIProvider("k", fake.openai_base_url, **timeouts),
            "anthropic": AnthropicProvider("k", fake.anthropic_base_url, **timeouts),
            "local": LocalProvider(),
        },
        load_price_table(),
        PipelineConfig(lease_s=30, retry=RetryPolicy(max_attempts=2, base_s=0.01, cap_s=0.02)),
        sleep=lambda _: None,
        rng=random.Random(0),
        budgets=budgets,
    )


def _job(
    engine: Engine,
    tenant_id: uuid.UUID,
    chain: list[str],
    text_: str = DOC,
    params: dict[str, Any] | None = None,
) -> str:
    return str(
        store.insert_job(
            engine, tenant_id=tenant_id, template="summarize", template_version=1,
            priority="default", chain=chain,
            item=store.NewJob(input=text_, params=params or {"no_cache": True}),
        )
    )  # fmt: skip


def _attempts(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT provider, model, outcome, input_tokens, output_tokens, cached_tokens, "
                    "cost_usd FROM attempts WHERE job_id = :id ORDER BY attempt_no"
                ),
                {"id": job_id},
            )
        )


def _job_row(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, error_code, cost_usd, input_tokens FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()


@pytest.mark.parametrize("link", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_cached_input_tokens_are_parsed_and_priced_at_the_cached_rate(
    engine: Engine, fake: FakeProviderServer, tenant: tuple[uuid.UUID, str], link: str
) -> None:
    fake.set_script(FakeScript(cached_fraction=0.5))
    job_id = _job(engine, tenant[0], [link])
    assert _pipeline(engine, fake).run(job_id) == "succeeded"
    (attempt,) = _attempts(engine, job_id)
    # Both wire formats end up as: input = all prompt tokens, cached = the cache reads.
    assert attempt.cached_tokens > 0
    assert attempt.cached_tokens == attempt.input_tokens // 2
    prices = load_price_table()
    price = prices.get(link)
    assert price is not None and price.cached_input < price.input
    expected = prices.cost(link, attempt.input_tokens, attempt.output_tokens, attempt.cached_tokens)
    assert attempt.cost_usd == expected
    uncached = prices.cost(link, attempt.input_tokens, attempt.output_tokens)
    assert uncached is not None and expected is not None and expected < uncached
    assert _job_row(engine, job_id).cost_usd == expected


def test_unpriced_model_keeps_tokens_with_null_cost_and_counts_a_warning(
    engine: Engine, fake: FakeProviderServer, tenant: tuple[uuid.UUID, str]
) -> None:
    model = f"unpriced-{uuid.uuid4().hex[:6]}"
    link = f"openai:{model}"
    before = _exported("llmq_missing_price_total", provider="openai", model=model)
    job_id = _job(engine, tenant[0], [link])
    assert _pipeline(engine, fake).run(job_id) == "succeeded"
    (attempt,) = _attempts(engine, job_id)
    assert attempt.input_tokens > 0 and attempt.output_tokens > 0
    assert attempt.cost_usd is None
    row = _job_row(engine, job_id)
    assert row.cost_usd is None and row.input_tokens == attempt.input_tokens
    assert _exported("llmq_missing_price_total", provider="openai", model=model) == before + 1


def test_failed_attempts_that_consumed_tokens_are_costed(
    engine: Engine, fake: FakeProviderServer, tenant: tuple[uuid.UUID, str]
) -> None:
    # A refusal is billed by the provider: the job fails, the tokens and cost stay.
    fake.set_script(FakeScript(rules=[FaultRule(api="openai", fault="refusal")]))
    job_id = _job(engine, tenant[0], ["openai:gpt-4o-mini"])
    assert _pipeline(engine, fake).run(job_id) == "failed"
    attempts = _attempts(engine, job_id)
    assert attempts and all(a.input_tokens > 0 and a.cost_usd > 0 for a in attempts)
    row = _job_row(engine, job_id)
    assert row.status == "failed"
    assert row.cost_usd == sum(a.cost_usd for a in attempts)


def _spend_keys(rclient: redis.Redis, tenant_id: uuid.UUID) -> list[bytes]:
    return list(rclient.scan_iter(f"llmq:budget:{tenant_id}:*"))


def test_guard_refuses_the_call_the_budget_left_cannot_cover_and_alerts_once_at_80_percent(
    engine: Engine,
    fake: FakeProviderServer,
    tenant: tuple[uuid.UUID, str],
    rclient: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant_id, name = tenant
    link = "openai:gpt-4o-mini"
    guard = BudgetGuard(engine, rclient, load_price_table(), limits_cache_s=0)
    pipeline = _pipeline(engine, fake, guard)
    params = {"no_cache": True, "max_tokens": 40}
    # A complete answer of about max_tokens (so estimates are close to real costs), not a
    # cut-off one (which the output review would retry or fail).
    answer = "The council approved the budget; parks gain, roads lose, a vote follows soon. " * 2
    fake.set_script(FakeScript(rules=[FaultRule(fault="reply", text=answer[:156])]))

    # Calibrate on one job without a budget: what one call really costs.
    first = _job(engine, tenant_id, [link], params=params)
    assert pipeline.run(first) == "succeeded"
    one_call = _job_row(engine, first).cost_usd
    assert one_call > 0

    # Room for about three more calls (estimates are upper bounds, so maybe fewer).
    store.set_budget(engine, name, one_call * 4 + one_call / 2, None)
    alerts_before = _exported("llmq_budget_soft_limit_total", scope="daily")
    caplog.set_level(logging.WARNING, logger="llmq.cost.budgets")
    fake.reset()
    outcomes = []
    for _ in range(8):
        job_id = _job(engine, tenant_id, [link], params=params)
        outcomes.append((pipeline.run(job_id), _job_row(engine, job_id)))
    succeeded = [o for o in outcomes if o[0] == "succeeded"]
    refused = [o for o in outcomes if o[0] == "failed"]
    assert 1 <= len(succeeded) <= 3
    assert len(succeeded) + len(refused) == 8
    # Once refused, always refused (nothing was freed), and no provider call was made for them.
    assert outcomes[: len(succeeded)] == succeeded
    assert all(row.error_code == "budget_exceeded" and row.cost_usd == 0 for _, row in refused)
    assert fake.stats()["requests"] == len(succeeded)
    spent = store.tenant_spend(engine, tenant_id, since=_midnight())
    assert spent <= one_call * 4 + one_call / 2

    # The 80% alert: one log event and one count, however many calls came after it.
    events = [r for r in caplog.records if getattr(r, "event", None) == "budget_soft_limit"]
    assert len(events) == 1 and events[0].scope == "daily"  # type: ignore[attr-defined]
    assert _exported("llmq_budget_soft_limit_total", scope="daily") == alerts_before + 1

    # Redis loses its copy (restart, flush): the guard re-reads Postgres and still refuses.
    rclient.delete(*_spend_keys(rclient, tenant_id))
    job_id = _job(engine, tenant_id, [link], params=params)
    assert pipeline.run(job_id) == "failed"
    assert _job_row(engine, job_id).error_code == "budget_exceeded"
    assert fake.stats()["requests"] == len(succeeded)

    # A higher limit applies at once (limits_cache_s=0 here; seconds in production).
    store.set_budget(engine, name, Decimal(1), None)
    job_id = _job(engine, tenant_id, [link], params=params)
    assert pipeline.run(job_id) == "succeeded"


def test_guard_reserves_in_flight_estimates_so_concurrent_calls_cannot_overshoot(
    engine: Engine, tenant: tuple[uuid.UUID, str], rclient: redis.Redis
) -> None:
    tenant_id, name = tenant
    prices = load_price_table()
    link = "openai:gpt-4o-mini"
    estimate = prices.estimate(link, 1000, 500)
    assert estimate is not None
    store.set_budget(engine, name, estimate * 3, None)
    guard = BudgetGuard(engine, rclient, prices, limits_cache_s=0)
    # Three calls in flight at once fit; the fourth does not, though nothing is spent yet.
    holds = [guard.reserve(tenant_id, None, link, 1000, 500) for _ in range(4)]
    assert [h.refused is None for h in holds] == [True, True, True, False]
    refused = holds[3].refused
    assert refused is not None and refused.spent_usd == estimate * 3
    # A finished call frees its reservation and counts what it really cost instead.
    guard.settle(holds[0], estimate / 4)
    # Room left: 3/4 of an estimate (0.0003375 USD): a 0.00033 call fits, then a 0.000075 one not.
    assert guard.reserve(tenant_id, None, link, 1000, 300).refused is None
    assert guard.reserve(tenant_id, None, link, 100, 100).refused is not None


def _midnight() -> Any:
    from datetime import UTC, datetime

    from llmq.cost.budgets import day_start

    return day_start(datetime.now(UTC))

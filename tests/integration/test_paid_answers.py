"""A paid answer survives Postgres refusing connections after the provider call (too many
clients, a role's CONNECTION LIMIT, a restart): the write is retried, or the call is parked in
Redis and the next delivery takes the lease over at once and finishes from it. Real Postgres,
Redis and fake provider; the refusals are injected into the pipeline's JobStore writes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from llmq import store
from llmq.execution.cache import ResultCache
from llmq.execution.paid import PREFIX, PaidCalls
from llmq.execution.pipeline import LeaseHandedOver, Pipeline
from llmq.settings import Settings
from llmq.testing.fake_provider import FakeProviderServer, FakeScript
from llmq.workers import reconciler
from tests.integration import test_pipeline
from tests.integration.test_pipeline import _attempts, _job, _pipeline, _row

tenant = test_pipeline.tenant  # the fixture, shared

REFUSED = OperationalError("INSERT", {}, Exception("FATAL: sorry, too many clients already"))


def _refusing(real: Callable[..., Any], times: float) -> Callable[..., Any]:
    """`real`, refused by Postgres for its first `times` calls."""
    calls = {"n": 0}

    def write(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise REFUSED
        return real(*args, **kwargs)

    return write


@pytest.fixture()
def client(services: Any) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url)


def _paid_pipeline(
    engine: Engine,
    fake: FakeProviderServer,
    client: redis.Redis,
    sleeps: list[float],
    cache: ResultCache | None = None,
) -> Pipeline:
    return _pipeline(
        engine, fake, sleeps=sleeps, cache=cache, db_retry_s=3.0, paid=PaidCalls(client, ttl_s=600)
    )


def test_a_refused_attempt_write_is_retried_and_the_answer_kept(
    engine: Engine,
    fake_provider: FakeProviderServer,
    client: redis.Redis,
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_provider.set_script(FakeScript())
    sleeps: list[float] = []
    pipeline = _paid_pipeline(engine, fake_provider, client, sleeps)
    jobs = pipeline.jobs
    monkeypatch.setattr(jobs, "record_attempt", _refusing(jobs.record_attempt, times=2))
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    calls = fake_provider.stats()["requests"]
    assert pipeline.run(job_id) == "succeeded"
    assert fake_provider.stats()["requests"] == calls + 1
    assert [a.outcome for a in _attempts(engine, job_id)] == ["ok"]
    assert len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1]  # backed off, jittered, growing
    assert _row(engine, job_id).deliveries == 1


def test_a_paid_answer_outliving_the_retries_is_parked_and_the_next_delivery_finishes_from_it(
    engine: Engine,
    fake_provider: FakeProviderServer,
    client: redis.Redis,
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _paid_pipeline(engine, fake_provider, client, [])
    real = pipeline.jobs.record_attempt
    monkeypatch.setattr(pipeline.jobs, "record_attempt", _refusing(real, times=float("inf")))
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    calls = fake_provider.stats()["requests"]
    with pytest.raises(LeaseHandedOver) as handed:
        pipeline.run(job_id)
    assert fake_provider.stats()["requests"] == calls + 1
    assert client.hlen(PREFIX + job_id) == 1  # the paid call, kept outside Postgres
    monkeypatch.setattr(pipeline.jobs, "record_attempt", real)  # Postgres is back

    # Its lease is live (30 s): only the message that carries the handed-over lease takes it.
    assert pipeline.run(job_id) == "not_claimable"
    assert pipeline.run(job_id, resume="someone-else") == "not_claimable"
    assert pipeline.run(job_id, resume=handed.value.owner) == "succeeded"

    assert fake_provider.stats()["requests"] == calls + 1  # not bought again
    row = _row(engine, job_id)
    assert [a.outcome for a in _attempts(engine, job_id)] == ["ok"]
    assert row.route[0]["recovered_attempt"] == 1 and not row.cache_hit
    assert row.deliveries == 1  # a hand-over is not a lost delivery
    assert row.input_tokens > 0 and row.cost_usd > 0  # counted once, from the parked call
    assert client.exists(PREFIX + job_id) == 0


def test_a_job_whose_finish_was_refused_is_not_finished_again_as_a_cache_hit(
    engine: Engine,
    fake_provider: FakeProviderServer,
    client: redis.Redis,
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_provider.set_script(FakeScript())
    cache = ResultCache(client, ttl_s=60)
    pipeline = _paid_pipeline(engine, fake_provider, client, [], cache=cache)
    real = pipeline.jobs.finish_job
    monkeypatch.setattr(pipeline.jobs, "finish_job", _refusing(real, times=float("inf")))
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    with pytest.raises(LeaseHandedOver) as handed:
        pipeline.run(job_id)  # the answer is recorded and cached, the finish refused
    monkeypatch.setattr(pipeline.jobs, "finish_job", real)
    calls = fake_provider.stats()["requests"]
    assert pipeline.run(job_id, resume=handed.value.owner) == "succeeded"
    assert fake_provider.stats()["requests"] == calls
    row = _row(engine, job_id)
    assert not row.cache_hit
    assert row.route == [{"link": "openai:gpt-4o-mini", "result": "ok", "recovered_attempt": 1}]
    assert row.cost_usd > 0 and len(_attempts(engine, job_id)) == 1


def test_after_a_postgres_outage_the_reconciler_renews_leases_instead_of_expiring_them(
    engine: Engine,
    client: redis.Redis,
    tenant: uuid.UUID,
    stack_env: dict[str, str],
) -> None:
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    assert store.claim_job(engine, job_id, "live-worker", lease_s=30) is not None
    with engine.begin() as conn:  # its keeper could not renew while Postgres was down
        conn.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job_id},
        )
    settings = Settings(job_lease_s=5)
    reconciler.tick(engine, client, settings, after_outage=True)
    row = _row(engine, job_id)
    assert (row.status, row.lease_owner) == ("running", "live-worker")
    reconciler.tick(engine, client, settings)  # the next tick: the lease is live again
    assert _row(engine, job_id).lease_owner == "live-worker"

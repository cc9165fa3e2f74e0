"""The pipeline as plain Python: real Postgres and the fake provider through the real SDKs, no
broker. Covers the chain's decisions and the fencing that makes redelivery harmless."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.execution.cache import ResultCache
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.providers.anthropic_provider import AnthropicProvider
from llmq.providers.local import LocalProvider
from llmq.providers.openai_provider import OpenAIProvider
from llmq.resilience.retry import RetryPolicy
from llmq.store.job_store import PostgresJobStore
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

DOC = (
    "The harbour authority approved a new ferry terminal. It will cost 40 million euros. "
    "Work starts in May. The old terminal closes next year. Ferries will run every hour."
)


@pytest.fixture()
def tenant(engine: Engine) -> uuid.UUID:
    key = store.create_api_key(engine, f"pipe-{uuid.uuid4().hex[:8]}")
    principal = store.authenticate(engine, key)
    assert principal is not None
    return principal.tenant_id


def _pipeline(
    engine: Engine,
    fake: FakeProviderServer,
    *,
    openai_key: str | None = "k",
    sleeps: list[float] | None = None,
    inline_max_s: float = 2.0,
    cache: ResultCache | None = None,
    db_retry_s: float = 30.0,
    **options: Any,
) -> Pipeline:
    timeouts = {"connect_timeout_s": 2.0, "read_timeout_s": 2.0}
    return Pipeline(
        PostgresJobStore(engine),
        {
            "openai": OpenAIProvider(openai_key, fake.openai_base_url, **timeouts),
            "anthropic": AnthropicProvider("k", fake.anthropic_base_url, **timeouts),
            "local": LocalProvider(),
        },
        load_price_table(),
        PipelineConfig(
            lease_s=30,
            retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.05, inline_max_s=inline_max_s),
            db_retry_s=db_retry_s,
        ),
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
        rng=random.Random(0),
        worker_name="test-worker",
        cache=cache,
        **options,
    )


def _job(
    engine: Engine,
    tenant: uuid.UUID,
    chain: list[str],
    text_: str = DOC,
    template: str = "summarize",
) -> str:
    return str(
        store.insert_job(
            engine,
            tenant_id=tenant,
            template=template,
            template_version=1,
            priority="default",
            chain=chain,
            item=store.NewJob(input=text_),
        )
    )


def _row(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).one()


def _attempts(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT * FROM attempts WHERE job_id = :id ORDER BY attempt_no"),
                {"id": job_id},
            )
        )


def test_unconfigured_provider_is_skipped_with_a_recorded_reason(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider, openai_key=None)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini", "local:extractive"])
    assert pipeline.run(job_id) == "succeeded"
    row = _row(engine, job_id)
    assert (row.provider, row.model) == ("local", "extractive")
    assert row.route == [
        {"link": "openai:gpt-4o-mini", "skipped": "not_configured"},
        {"link": "local:extractive", "result": "ok"},
    ]
    assert [a.provider for a in _attempts(engine, job_id)] == ["local"]


def test_redelivered_message_for_a_finished_job_is_a_no_op(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    before = fake_provider.stats()["requests"]
    assert pipeline.run(job_id) == "succeeded"
    assert pipeline.run(job_id) == "not_claimable"
    assert fake_provider.stats()["requests"] == before + 1
    assert len(_attempts(engine, job_id)) == 1


def test_a_worker_that_lost_its_lease_cannot_write(engine: Engine, tenant: uuid.UUID) -> None:
    job_id = _job(engine, tenant, ["local:extractive"])
    first = store.claim_job(engine, job_id, "worker-a", lease_s=30)
    assert first is not None
    assert store.claim_job(engine, job_id, "worker-b", lease_s=30) is None  # lease is live
    with engine.begin() as conn:  # worker-a's lease runs out (it hung or died)
        conn.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": job_id},
        )
    second = store.claim_job(engine, job_id, "worker-b", lease_s=30)
    assert second is not None and second.deliveries == 2
    attempt = store.AttemptRecord(
        provider="local", model="extractive", outcome="ok", latency_ms=1.0
    )
    assert store.record_attempt(engine, first.id, "worker-a", 30, attempt) is None
    assert (
        store.finish_job(
            engine, first.id, "worker-a", store.Outcome(status="succeeded", result="stale")
        )
        is False
    )
    recorded = store.record_attempt(engine, second.id, "worker-b", 30, attempt)
    assert recorded is not None and recorded.attempt_no == 1
    assert (
        store.finish_job(
            engine, second.id, "worker-b", store.Outcome(status="succeeded", result="fresh")
        )
        is True
    )
    row = _row(engine, job_id)
    assert (row.status, row.result, row.attempts_made) == ("succeeded", "fresh", 1)


def test_retry_after_is_honoured_then_the_call_succeeds(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(
        FakeScript(
            rules=[FaultRule(api="openai", fault="status", status=429, retry_after=1.5, first_n=1)]
        )
    )
    sleeps: list[float] = []
    pipeline = _pipeline(engine, fake_provider, sleeps=sleeps)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    assert pipeline.run(job_id) == "succeeded"
    assert sleeps == [1.5]
    outcomes = [(a.outcome, a.http_status) for a in _attempts(engine, job_id)]
    assert outcomes == [("rate_limited", 429), ("ok", 200)]


def test_long_backoff_defers_the_job_instead_of_sleeping(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(
        FakeScript(
            rules=[FaultRule(api="openai", fault="status", status=429, retry_after=30, first_n=1)]
        )
    )
    sleeps: list[float] = []
    pipeline = _pipeline(engine, fake_provider, sleeps=sleeps)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    assert pipeline.run(job_id) == "deferred"
    row = _row(engine, job_id)
    assert row.status == "retrying" and row.lease_owner is None and sleeps == []
    with engine.connect() as conn:
        wait = conn.execute(
            text("SELECT extract(epoch FROM not_before - now()) FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).scalar_one()
    assert 25 < wait <= 30
    # When it comes back (the reconciler publishes it when due) it resumes, attempts kept.
    assert pipeline.run(job_id) == "succeeded"
    assert [a.attempt_no for a in _attempts(engine, job_id)] == [1, 2]
    assert _row(engine, job_id).deliveries == 1  # a planned hand-back is not a lost delivery


def test_every_link_failing_ends_the_job_with_a_code_and_no_made_up_text(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript(rules=[FaultRule(api="*", fault="status", status=503)]))
    pipeline = _pipeline(engine, fake_provider)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
    assert pipeline.run(job_id) == "failed"
    row = _row(engine, job_id)
    assert row.error_code == "all_providers_failed" and row.result is None
    assert "openai:gpt-4o-mini (server_error)" in row.error_message
    assert len(_attempts(engine, job_id)) == 6
    fake_provider.set_script(FakeScript())


def test_non_retryable_errors_move_on_at_once(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(
        FakeScript(rules=[FaultRule(api="openai", fault="status", status=400, context_length=True)])
    )
    pipeline = _pipeline(engine, fake_provider)
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
    assert pipeline.run(job_id) == "succeeded"
    outcomes = [(a.provider, a.outcome) for a in _attempts(engine, job_id)]
    assert outcomes == [("openai", "context_too_long"), ("anthropic", "ok")]
    fake_provider.set_script(FakeScript())


def test_input_too_long_for_a_model_skips_to_a_longer_context_link(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider)
    long_doc = "A sentence about the ferry terminal budget. " * 30_000  # ~300k tokens
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini", "openai:gpt-4.1"], long_doc)
    assert pipeline.run(job_id) == "succeeded"
    row = _row(engine, job_id)
    assert row.model == "gpt-4.1"
    assert row.route[0] == {"link": "openai:gpt-4o-mini", "skipped": "context_too_small"}


def test_unsafe_output_is_blocked(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider)
    # The fake provider echoes its input, so the "model" answers with a destructive command.
    job_id = _job(
        engine, tenant, ["openai:gpt-4o-mini"], "DROP TABLE users; then relax", template="prompt"
    )
    assert pipeline.run(job_id) == "blocked"
    row = _row(engine, job_id)
    assert row.error_code == "output_blocked"
    assert "unsafe_output.drop_table" in row.error_message
    assert row.result is None


def test_batch_copy_round_trips_awkward_text(engine: Engine, tenant: uuid.UUID) -> None:
    awkward = [
        "tab\there",
        "line\nbreak\r\nwindows",
        "back\\slash \\N not null",
        "emoji 🚀 ü",
        "{json: 'like'}",
        "\\.",
    ]
    shared_params = {"style": "short"}
    batch_id = store.insert_batch(
        engine,
        tenant_id=tenant,
        template="summarize",
        template_version=1,
        priority="low",
        chain=["local:extractive"],
        meta={"k": "v"},
        items=[
            store.NewJob(input=t, custom_id=f"c\t{i}", params=shared_params, meta={"n": i})
            for i, t in enumerate(awkward)
        ],
    )
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT seq, custom_id, input, params, metadata, priority, "
                "chain, status FROM jobs WHERE batch_id = :b ORDER BY seq"
            ),
            {"b": batch_id},
        ).all()
    assert [r.input for r in rows] == awkward
    assert [r.custom_id for r in rows] == [f"c\t{i}" for i in range(len(awkward))]
    assert [r.metadata for r in rows] == [{"n": i} for i in range(len(awkward))]
    assert all(
        r.params == shared_params
        and r.priority == "low"
        and r.status == "queued"
        and r.chain == ["local:extractive"]
        for r in rows
    )


def test_dead_primary_opens_the_circuit_and_later_jobs_skip_it(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID, services: Any
) -> None:
    import redis

    from llmq.resilience.circuit import CircuitBreaker, CircuitPolicy

    fake_provider.set_script(
        FakeScript(rules=[FaultRule(api="openai", model="dead-*", fault="status", status=500)])
    )
    model = f"dead-{uuid.uuid4().hex[:6]}"
    breaker = CircuitBreaker(
        redis.Redis.from_url(services.redis_url),
        CircuitPolicy(failure_threshold=3, window_s=60, cooldown_s=60),
    )
    pipeline = _pipeline(engine, fake_provider, breaker=breaker)
    chain = [f"openai:{model}", "anthropic:claude-haiku-4-5"]
    first = _job(engine, tenant, chain)
    assert pipeline.run(first) == "succeeded"  # 3 failures on the primary open the circuit
    assert breaker.state(f"openai:{model}") == "open"
    calls_before = fake_provider.stats()["by_model"].get(model, 0)
    assert calls_before == 3
    later = [_job(engine, tenant, chain) for _ in range(5)]
    assert all(pipeline.run(job_id) == "succeeded" for job_id in later)
    assert fake_provider.stats()["by_model"].get(model, 0) == calls_before  # never called
    assert _row(engine, later[0]).route[0] == {"link": f"openai:{model}", "skipped": "circuit_open"}
    fake_provider.set_script(FakeScript())


def test_a_job_past_its_deadline_fails_instead_of_calling_again(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    pipeline = _pipeline(engine, fake_provider)
    assert pipeline.config.deadline_s == 600
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    with engine.begin() as conn:  # first started 20 minutes ago, then backed off for long
        conn.execute(
            text(
                "UPDATE jobs SET started_at = now() - interval '20 minutes', "
                "status = 'retrying' WHERE id = :id"
            ),
            {"id": job_id},
        )
    assert pipeline.run(job_id) == "failed"
    row = _row(engine, job_id)
    assert row.error_code == "deadline_exceeded" and "600 s" in row.error_message
    assert _attempts(engine, job_id) == []
    fresh = _job(engine, tenant, ["openai:gpt-4o-mini"])
    assert pipeline.run(fresh) == "succeeded"


@pytest.fixture()
def cache(services: Any) -> ResultCache:
    return ResultCache(redis.Redis.from_url(services.redis_url), ttl_s=60)


def _job_with(engine: Engine, tenant: uuid.UUID, text_: str, params: dict[str, Any]) -> str:
    return str(
        store.insert_job(
            engine, tenant_id=tenant, template="summarize", template_version=1,
            priority="default", chain=["openai:gpt-4o-mini"],
            item=store.NewJob(input=text_, params=params),
        )
    )  # fmt: skip


def test_the_same_question_is_answered_from_the_cache_without_a_call(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID, cache: ResultCache
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider, cache=cache)
    doc = f"{DOC} Reference {uuid.uuid4()}."
    first, second = _job_with(engine, tenant, doc, {}), _job_with(engine, tenant, doc, {})
    assert pipeline.run(first) == "succeeded"
    calls = fake_provider.stats()["requests"]
    assert pipeline.run(second) == "succeeded"
    assert fake_provider.stats()["requests"] == calls
    hit = _row(engine, second)
    assert hit.cache_hit and hit.result == _row(engine, first).result
    assert hit.route == [{"link": "cache", "result": "ok"}]
    assert _attempts(engine, second) == [] and hit.cost_usd == 0


def test_a_cached_answer_is_the_last_link_when_every_provider_fails(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID, cache: ResultCache
) -> None:
    fake_provider.set_script(FakeScript())
    pipeline = _pipeline(engine, fake_provider, cache=cache)
    doc = f"{DOC} Reference {uuid.uuid4()}."
    assert pipeline.run(_job_with(engine, tenant, doc, {})) == "succeeded"
    fake_provider.set_script(FakeScript(rules=[FaultRule(fault="status", status=500)]))
    fresh = _job_with(engine, tenant, doc, {"no_cache": True})  # asks for a new answer...
    assert pipeline.run(fresh) == "succeeded"  # ...but an old one beats a failure
    row = _row(engine, fresh)
    assert row.cache_hit and row.route[-1] == {"link": "cache", "result": "ok"}
    assert [a.outcome for a in _attempts(engine, fresh)] == ["server_error"] * 3
    other = _job_with(engine, tenant, f"{DOC} Never seen {uuid.uuid4()}.", {})
    assert pipeline.run(other) == "failed"  # no cached answer: a clear failure, no made-up text
    assert _row(engine, other).error_code == "all_providers_failed"
    fake_provider.set_script(FakeScript())


def test_an_unreachable_cache_store_never_fails_a_job(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    dead = ResultCache(redis.Redis(port=1, socket_connect_timeout=0.2), ttl_s=60)
    pipeline = _pipeline(engine, fake_provider, cache=dead)
    assert pipeline.run(_job_with(engine, tenant, DOC, {})) == "succeeded"
    assert dead.errors == 2  # the lookup and the store, both logged and counted


def test_a_worker_that_died_after_a_paid_answer_is_not_paid_for_twice(
    engine: Engine, fake_provider: FakeProviderServer, tenant: uuid.UUID
) -> None:
    fake_provider.set_script(FakeScript())
    job_id = _job(engine, tenant, ["openai:gpt-4o-mini"])
    assert store.claim_job(engine, job_id, "dead-worker", lease_s=30) is not None
    answer = store.AttemptRecord(
        provider="openai", model="gpt-4o-mini", outcome="ok", latency_ms=80.0,
        input_tokens=50, output_tokens=12, output="The terminal costs 40 million euros.",
    )  # fmt: skip
    assert store.record_attempt(engine, uuid.UUID(job_id), "dead-worker", 30, answer)
    with engine.begin() as conn:  # it died before finish_job: the lease runs out
        conn.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job_id},
        )
    calls = fake_provider.stats()["requests"]
    assert _pipeline(engine, fake_provider).run(job_id) == "succeeded"
    assert fake_provider.stats()["requests"] == calls  # no second call
    row = _row(engine, job_id)
    assert row.result == "The terminal costs 40 million euros."
    assert (row.input_tokens, row.output_tokens, row.attempts_made) == (50, 12, 1)
    assert row.route[0]["recovered_attempt"] == 1

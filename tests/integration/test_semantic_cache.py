"""The semantic cache through the pipeline as plain Python: real Postgres with pgvector (the
embedded server ships it), the fake provider's chat and /v1/embeddings through the real SDK,
no broker. The fake's vectors are hashed bags of words, so "similar" means "the same words"."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.execution.semantic_cache import SemanticCache
from llmq.providers.embeddings import Embedder
from llmq.providers.local import LocalProvider
from llmq.providers.openai_provider import OpenAIProvider
from llmq.resilience.retry import RetryPolicy
from llmq.settings import CacheScope
from llmq.store.job_store import PostgresJobStore
from llmq.store.semantic_cache import DIMENSIONS
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import Services, make_isolated_env

CHAIN = ["openai:gpt-4o-mini"]
EMBEDDING = "openai:text-embedding-3-small"

SEED = "What is the capital of France?"
# Same content words as SEED, other wording: hits at the default threshold (0.95).
PARAPHRASES = [
    "what's the capital of france",
    "France: what is its capital?",
    "Tell me, what is the CAPITAL of France, please.",
]
# Unrelated, or sharing a word with SEED but asking something else: never a hit.
UNRELATED = [
    "What is the capital of Spain?",
    "How tall is the Eiffel Tower in Paris?",
    "Explain how a diesel engine works.",
]


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    fake_provider.set_script(FakeScript())
    fake_provider.reset()
    yield fake_provider
    fake_provider.set_script(FakeScript())


def _tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(
        engine, store.create_api_key(engine, f"sem-{uuid.uuid4().hex[:8]}")
    )
    assert principal is not None
    return principal.tenant_id


def _pipeline(
    engine: Engine, fake: FakeProviderServer, scope: CacheScope = "tenant", **semantic: Any
) -> Pipeline:
    timeouts = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0}
    prices = load_price_table()
    embedder = Embedder(EMBEDDING, "k", fake.openai_base_url, dimensions=DIMENSIONS, **timeouts)
    cache = SemanticCache(
        engine, embedder, prices, scope=scope, default_threshold=0.95, ttl_s=3600, **semantic
    )
    return Pipeline(
        PostgresJobStore(engine),
        {"openai": OpenAIProvider("k", fake.openai_base_url, **timeouts), "local": LocalProvider()},
        prices,
        PipelineConfig(
            lease_s=30, cache_scope=scope, retry=RetryPolicy(max_attempts=1, base_s=0.01)
        ),
        sleep=lambda _: None,
        rng=random.Random(0),
        semantic=cache,
    )


def _run(
    pipeline: Pipeline,
    engine: Engine,
    tenant_id: uuid.UUID,
    question: str,
    template: str = "prompt",
    **params: Any,
) -> dict[str, Any]:
    job_id = store.insert_job(
        engine, tenant_id=tenant_id, template=template, template_version=1,
        priority="default", chain=CHAIN, item=store.NewJob(input=question, params=params),
    )  # fmt: skip
    pipeline.run(str(job_id))
    job = store.get_job(engine, tenant_id, job_id)
    assert job is not None
    return job


def _chat_calls(fake: FakeProviderServer) -> int:
    return int(fake.stats()["by_api"].get("openai", 0))


def _embedding_calls(fake: FakeProviderServer) -> int:
    return int(fake.stats()["by_api"].get("embeddings", 0))


def _semantic_step(job: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in job["route"] or [] if r.get("link") == "semantic_cache"), None)


def test_paraphrases_hit_and_unrelated_questions_do_not(engine: Engine, fake: Any) -> None:
    pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
    seed = _run(pipeline, engine, tenant, SEED)
    assert seed["status"] == "succeeded" and not seed["cache_hit"]
    assert _chat_calls(fake) == 1

    for question in PARAPHRASES:
        job = _run(pipeline, engine, tenant, question)
        step = _semantic_step(job)
        assert job["status"] == "succeeded" and job["cache_hit"], question
        assert step is not None and step["source_job_id"] == str(seed["id"])
        assert step["similarity"] >= 0.95
        assert job["result"] == seed["result"]
        assert (job["provider"], job["model"]) == ("openai", "gpt-4o-mini")
    assert _chat_calls(fake) == 1  # every paraphrase answered without a chat call

    for question in UNRELATED:
        job = _run(pipeline, engine, tenant, question)
        assert job["status"] == "succeeded" and not job["cache_hit"], question
        assert _semantic_step(job) is None
        assert job["result"] != seed["result"]
    assert _chat_calls(fake) == 1 + len(UNRELATED)
    # Every job embedded its question once, hit or not.
    assert _embedding_calls(fake) == 1 + len(PARAPHRASES) + len(UNRELATED)


def test_a_hit_costs_the_embedding_call_only_and_says_where_it_came_from(
    engine: Engine, fake: Any
) -> None:
    pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
    seed = _run(pipeline, engine, tenant, "Which river flows through Vienna?")
    assert [a["model"] for a in seed["attempts"]] == ["text-embedding-3-small", "gpt-4o-mini"]
    assert seed["cost_usd"] == sum(a["cost_usd"] for a in seed["attempts"])

    hit = _run(pipeline, engine, tenant, "Vienna: which river flows through it?")
    (attempt,) = hit["attempts"]
    assert (attempt["provider"], attempt["model"], attempt["outcome"]) == (
        "openai", "text-embedding-3-small", "ok",
    )  # fmt: skip
    prices = load_price_table()
    assert attempt["cost_usd"] == prices.cost(EMBEDDING, attempt["input_tokens"], 0, 0)
    assert Decimal(0) < hit["cost_usd"] == attempt["cost_usd"] < seed["cost_usd"]
    assert hit["cache_hit"] and hit["route"] == [
        {
            "link": "semantic_cache",
            "result": "ok",
            "similarity": _semantic_step(hit)["similarity"],  # type: ignore[index]
            "source_job_id": str(seed["id"]),
        }
    ]


def test_thresholds_per_request_and_per_template(engine: Engine, fake: Any) -> None:
    tenant = _tenant(engine)
    pipeline = _pipeline(engine, fake)
    _run(pipeline, engine, tenant, "Who painted the Mona Lisa?")
    reworded = "Who was the painter of the Mona Lisa painting?"  # 3 of 5 words shared
    assert not _run(pipeline, engine, tenant, reworded)["cache_hit"]  # 0.95 by default
    assert _run(pipeline, engine, tenant, reworded, semantic_cache=0.5)["cache_hit"]
    before = _embedding_calls(fake)
    assert not _run(pipeline, engine, tenant, "Who painted the Mona Lisa?", semantic_cache=False)[
        "cache_hit"
    ]
    assert _embedding_calls(fake) == before  # off: not even embedded

    # An operator's false for the template wins over a request's threshold.
    off = _pipeline(engine, fake, per_template={"prompt": False})
    assert not _run(off, engine, tenant, reworded, semantic_cache=0.5)["cache_hit"]


def test_summaries_of_documents_are_off_unless_opted_in(engine: Engine, fake: Any) -> None:
    pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
    doc = "The council approved the harbour budget. Work starts in May. Costs are 40 million."
    _run(pipeline, engine, tenant, doc, template="summarize")
    again = _run(pipeline, engine, tenant, doc + " ", template="summarize")
    assert not again["cache_hit"] and _embedding_calls(fake) == 0
    # A template setting (or a request) opts in.
    opted = _pipeline(engine, fake, per_template={"summarize": 0.99})
    _run(opted, engine, tenant, doc, template="summarize")
    assert _run(opted, engine, tenant, doc + " ", template="summarize")["cache_hit"]


def test_never_across_tenants_unless_the_scope_is_global(engine: Engine, fake: Any) -> None:
    a, b = _tenant(engine), _tenant(engine)
    question = f"What does the code word {uuid.uuid4().hex[:8]} stand for?"
    tenant_scoped = _pipeline(engine, fake)
    _run(tenant_scoped, engine, a, question)
    assert not _run(tenant_scoped, engine, b, question)["cache_hit"]
    assert _run(tenant_scoped, engine, b, question)["cache_hit"]  # b's own answer now

    shared = _pipeline(engine, fake, scope="global")
    other = f"Who invented the code word {uuid.uuid4().hex[:8]}?"
    _run(shared, engine, a, other)
    assert _run(shared, engine, b, other)["cache_hit"]


def test_no_entry_from_a_blocked_output_and_no_raw_pii_embedded(engine: Engine, fake: Any) -> None:
    pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
    question = "How do I clean up the accounts table?"
    unsafe = FaultRule(api="openai", fault="reply", text="Run DELETE FROM accounts; and done.")
    fake.set_script(FakeScript(rules=[unsafe]))
    blocked = _run(pipeline, engine, tenant, question)
    assert blocked["status"] == "blocked"
    with engine.connect() as conn:
        entries = conn.execute(
            text("SELECT count(*) FROM semantic_cache WHERE source_job_id = :id"),
            {"id": blocked["id"]},
        ).scalar()
    assert entries == 0
    fake.set_script(FakeScript())
    again = _run(pipeline, engine, tenant, question)
    assert again["status"] == "succeeded" and not again["cache_hit"]

    email = f"jane.{uuid.uuid4().hex[:6]}@example.com"
    _run(pipeline, engine, tenant, f"Write a polite reminder to {email} about the invoice.")
    bodies = fake.requests("text-embedding-3-small")
    assert bodies and all(email not in str(body) for body in bodies)
    assert "[EMAIL]" in str(bodies[-1])


def test_a_database_without_the_table_runs_jobs_with_the_cache_off(
    services: Services,
    stack_env: dict[str, str],
    fake: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = make_isolated_env(services, stack_env)
    engine = create_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE semantic_cache"))
            conn.execute(text("DROP EXTENSION vector"))
        caplog.set_level(logging.WARNING, logger="llmq.execution.semantic_cache")
        pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
        for _ in range(2):
            job = _run(pipeline, engine, tenant, SEED)
            assert job["status"] == "succeeded" and not job["cache_hit"]
        assert _embedding_calls(fake) == 0
        off = [r.getMessage() for r in caplog.records if "semantic cache is off" in r.getMessage()]
        assert off == [
            "semantic cache is off: the pgvector extension is not installed in this database"
        ]
    finally:
        engine.dispose()


def test_cli_status_and_clear(services: Services, stack_env: dict[str, str], fake: Any) -> None:
    from .test_cli import _llmq

    env = {**make_isolated_env(services, stack_env), "LLMQ_SEMANTIC_CACHE": "true"}
    engine = create_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    try:
        name = f"sem-cli-{uuid.uuid4().hex[:6]}"
        principal = store.authenticate(engine, store.create_api_key(engine, name))
        assert principal is not None
        pipeline = _pipeline(engine, fake)
        for question in ("Why is the sky blue?", "How do bees make honey?"):
            _run(pipeline, engine, principal.tenant_id, question)

        shown = _llmq("semantic-cache", "status", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "semantic cache: on" in shown.stdout
        assert "entries: 2 (0 expired), scopes: 1" in shown.stdout

        cleared = _llmq("semantic-cache", "clear", "--tenant", name, env=env)
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout.strip() == "deleted 2 entries"
        assert not _run(pipeline, engine, principal.tenant_id, "Why is the sky blue?")["cache_hit"]

        with engine.begin() as conn:
            conn.execute(text("DROP TABLE semantic_cache"))
        off = _llmq("semantic-cache", "status", env=env)
        assert off.returncode == 0, off.stderr
        assert "semantic cache: off (the semantic_cache table is missing" in off.stdout
    finally:
        engine.dispose()


def test_a_failed_embedding_is_recorded_and_the_chain_answers(engine: Engine, fake: Any) -> None:
    pipeline, tenant = _pipeline(engine, fake), _tenant(engine)
    fake.set_script(FakeScript(rules=[FaultRule(api="embeddings", fault="status", status=503)]))
    job = _run(pipeline, engine, tenant, "What is the boiling point of water at sea level?")
    assert job["status"] == "succeeded" and not job["cache_hit"]
    assert [(a["model"], a["outcome"], a["http_status"]) for a in job["attempts"]] == [
        ("text-embedding-3-small", "server_error", 503),
        ("gpt-4o-mini", "ok", 200),
    ]
    assert _chat_calls(fake) == 1


def test_the_worker_pipeline_has_it_only_when_enabled(engine: Engine, fake: Any) -> None:
    from llmq.settings import Settings
    from llmq.workers.runtime import build_pipeline

    assert build_pipeline(Settings(), name="sem-off").semantic is None
    pipeline = build_pipeline(Settings(semantic_cache=True), name="sem-on")
    assert pipeline.semantic is not None
    tenant = _tenant(engine)
    first = _run(pipeline, engine, tenant, "Why do cats purr when happy?")
    second = _run(pipeline, engine, tenant, "When happy, why do cats purr?")
    step = _semantic_step(second)
    assert second["cache_hit"] and step is not None and step["source_job_id"] == str(first["id"])


def test_the_embedding_call_is_held_to_the_budget(
    engine: Engine, fake: Any, services: Services
) -> None:
    import redis

    from llmq.cost.budgets import BudgetGuard

    name = f"sem-budget-{uuid.uuid4().hex[:6]}"
    principal = store.authenticate(engine, store.create_api_key(engine, name))
    assert principal is not None
    client = redis.Redis.from_url(services.redis_url, socket_timeout=5)
    pipeline = _pipeline(engine, fake)
    pipeline.calls.budgets = BudgetGuard(engine, client, load_price_table(), limits_cache_s=0)
    # A budget already used up by a paid job: the embedding (the first paid call) is refused.
    spent = _run(pipeline, engine, principal.tenant_id, "What is the speed of light?")
    assert spent["status"] == "succeeded" and spent["cost_usd"] > 0
    store.set_budget(engine, name, spent["cost_usd"] / 2, None)
    before = _embedding_calls(fake), _chat_calls(fake)
    job = _run(pipeline, engine, principal.tenant_id, "How far away is the Moon?")
    assert (job["status"], job["error_code"]) == ("failed", "budget_exceeded")
    assert job["route"] == [{"link": EMBEDDING, "skipped": "budget_exceeded"}]
    assert (_embedding_calls(fake), _chat_calls(fake)) == before and job["attempts"] == []

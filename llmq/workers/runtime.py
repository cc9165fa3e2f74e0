"""Per-process worker state: one engine, one set of provider clients, one pipeline."""

from __future__ import annotations

import functools
import socket
import threading

from sqlalchemy import Engine

from llmq import store
from llmq.cost.budgets import BudgetGuard
from llmq.cost.pricing import PriceTable, load_price_table
from llmq.evals.spec import ShadowSpec
from llmq.execution.cache import ResultCache
from llmq.execution.dedup import InFlight, wake_jobs
from llmq.execution.leases import LeaseKeeper
from llmq.execution.paid import PaidCalls
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.execution.semantic_cache import SemanticCache
from llmq.execution.shadow import Shadows
from llmq.guardrails import load_plugins
from llmq.longdocs.mapreduce import LongDocConfig, LongDocuments
from llmq.providers.embeddings import Embedder
from llmq.providers.registry import build_providers
from llmq.resilience.adaptive import provider_accounts
from llmq.resilience.circuit import CircuitBreaker, circuit_policy
from llmq.resilience.ratelimit import Limit, RateLimiter
from llmq.resilience.redis_clients import redis_client
from llmq.resilience.retry import RetryPolicy
from llmq.settings import Settings, get_settings
from llmq.store.engine import get_engine
from llmq.store.job_store import PostgresJobStore
from llmq.store.semantic_cache import DIMENSIONS
from llmq.telemetry.events import EventPublisher

from .dispatch import publish_jobs

# Streams debounce 100 ms themselves, so 50 ms of coalescing is invisible to a client.
EVENTS_COALESCE_S = 0.05

_lock = threading.Lock()
_pipeline: Pipeline | None = None
worker_name = f"{socket.gethostname()}"


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        lease_s=settings.job_lease_s,
        max_deliveries=settings.max_deliveries,
        max_output_tokens=settings.max_output_tokens,
        deadline_s=settings.job_deadline_s,
        input_guardrails=settings.input_guardrails,
        output_guardrails=settings.output_guardrails,
        banned_terms=settings.banned_terms,
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            inline_max_s=settings.retry_inline_max_s,
        ),
        template_max_input_tokens=settings.template_max_input_tokens,
        truncation_retry_max_tokens=settings.truncation_retry_max_tokens,
        cache_scope=settings.cache_scope,
        db_retry_s=settings.db_retry_s,
        rate_wait_max_s=settings.rate_wait_max_s,
    )


def build_pipeline(settings: Settings, name: str | None = None) -> Pipeline:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    engine = get_engine(settings.database_url)
    load_plugins(settings.guardrail_plugins)
    config = pipeline_config(settings)
    client = redis_client(settings)
    prices = load_price_table(settings.pricing_file)
    jobs = PostgresJobStore(engine)
    return Pipeline(
        jobs,
        build_providers(settings),
        prices,
        config,
        cache=ResultCache(client, settings.cache_ttl_s),
        breaker=CircuitBreaker(client, circuit_policy(settings)),
        limiter=RateLimiter(
            client,
            {link: Limit(**limit) for link, limit in settings.rate_limits.items()},
            settings.rate_window_s,
            adaptive=settings.adaptive_rate_limits,
            margin=settings.rate_limit_margin,
            accounts=provider_accounts(settings),
        ),
        leases=LeaseKeeper(jobs, settings.job_lease_s),
        worker_name=name or worker_name,
        events=EventPublisher(client, coalesce_s=EVENTS_COALESCE_S),
        long_documents=long_documents(settings, engine),
        budgets=BudgetGuard(
            engine,
            client,
            prices,
            reconcile_s=settings.budget_reconcile_s,
            hold_ttl_s=settings.job_deadline_s + settings.job_lease_s,
            limits_cache_s=settings.budget_cache_s,
            soft_fraction=settings.budget_soft_fraction,
        ),
        # Identical jobs in flight at once are computed once; the lock lives as long as a lease.
        inflight=InFlight(
            client, settings.job_lease_s, functools.partial(wake_jobs, engine, publish_jobs)
        )
        if settings.cache_dedup
        else None,
        # Parked calls wait for the job's next delivery, at most its whole life.
        paid=PaidCalls(client, settings.job_deadline_s + settings.job_lease_s),
        shadows=shadows(settings, engine),
        semantic=semantic_cache(settings, engine, prices) if settings.semantic_cache else None,
    )


def shadows(settings: Settings, engine: Engine) -> Shadows:
    return Shadows(
        {name: ShadowSpec.parse(raw) for name, raw in settings.template_shadow.items()},
        functools.partial(store.batch_shadow, engine),
        publish_jobs,
        functools.partial(store.undo_dispatch, engine),
        functools.partial(store.judge_context, engine),
    )


def semantic_cache(settings: Settings, engine: Engine, prices: PriceTable) -> SemanticCache:
    key = settings.semantic_cache_api_key or settings.openai_api_key
    embedder = Embedder(
        settings.semantic_cache_embedding,
        key.get_secret_value() if key is not None else None,
        settings.semantic_cache_base_url or settings.openai_base_url,
        dimensions=DIMENSIONS,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=settings.provider_read_timeout_s,
    )
    return SemanticCache(
        engine, embedder, prices,
        scope=settings.cache_scope,
        default_threshold=settings.semantic_cache_threshold,
        ttl_s=settings.semantic_cache_ttl_s,
        per_template=settings.semantic_cache_templates,
    )  # fmt: skip


def long_documents(settings: Settings, engine: Engine) -> LongDocuments:
    config = LongDocConfig(
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        max_output_tokens=settings.max_output_tokens,
    )
    return LongDocuments(engine, load_price_table(settings.pricing_file), config, publish_jobs)


def get_pipeline() -> Pipeline:
    global _pipeline
    if _pipeline is None:
        with _lock:
            if _pipeline is None:
                _pipeline = build_pipeline(get_settings())
    return _pipeline


def close_pipeline() -> None:
    """Send what the process still holds back (coalesced notifications) at shutdown."""
    if _pipeline is not None and _pipeline.events is not None:
        _pipeline.events.close()

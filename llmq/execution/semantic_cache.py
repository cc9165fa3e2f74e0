"""The semantic cache step of the pipeline: after the exact cache missed and before the chain, a
question close enough in meaning to one already answered gets that answer.

What must match exactly (the partition): scope (the tenant, unless LLMQ_CACHE_SCOPE=global),
template and version, the chain used, the params that change an answer, the embedding model.
Only the question (the job's input after the input guardrails: redacted text, never raw PII)
is compared, by cosine similarity of its embedding, against a threshold. The embedding call is a
provider call: it is recorded as an attempt with its cost, so a hit costs that call alone.
An entry is written only for an answer the chain gave and the output guardrails and review
accepted (a succeeded, complete answer), never from a blocked or invalid output.

Eligibility (`threshold`): the per-template setting (false turns a template off), then the
request's `params.semantic_cache` (false, true, or a threshold); summarizing templates stay off
unless one of those opts in, since two different documents' summaries are never interchangeable.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from llmq import store
from llmq.cost.budgets import Hold
from llmq.cost.pricing import PriceTable
from llmq.cost.tokens import estimate_tokens
from llmq.errors import JobErrorCode
from llmq.execution import output_review, routing
from llmq.execution.cache import CachedResult
from llmq.execution.calls import ProviderCalls
from llmq.execution.outcomes import from_cache
from llmq.providers.base import ProviderError
from llmq.providers.embeddings import Embedder
from llmq.settings import CacheScope
from llmq.store import crypto
from llmq.store import semantic_cache as entries
from llmq.store.models import JobStatus
from llmq.telemetry import hooks
from llmq.telemetry.metrics import SEMANTIC_CACHE_LOOKUPS
from llmq.templates import Template

log = logging.getLogger(__name__)

PARAM = "semantic_cache"
# Params that do not change the answer: the cache's own switches, and the short-input route
# (already in the partition as the chain it chose).
NOT_IN_PARTITION = frozenset({PARAM, "no_cache", routing.PARAM})
# text-embedding-3-small reads at most 8191 tokens; a longer input is not looked up at all.
MAX_EMBED_TOKENS = 8000


def threshold(
    template: Template,
    params: dict[str, Any],
    default: float,
    per_template: dict[str, float | bool],
) -> float | None:
    """The similarity a hit needs for this job, or None: no semantic cache for it."""
    configured = per_template.get(template.name)
    asked = params.get(PARAM)
    if configured is False or asked is False or template.internal:
        return None
    if isinstance(asked, int | float) and not isinstance(asked, bool):
        return float(asked)
    if isinstance(configured, int | float) and not isinstance(configured, bool):
        return float(configured)
    if asked is True or configured is True:
        return default
    # Two different documents' summaries are never interchangeable: opt in only.
    return None if template.summarizes else default


def params_hash(params: dict[str, Any]) -> str:
    """Digest of the params that change an answer (keyed like the exact cache's key)."""
    kept = {k: v for k, v in params.items() if k not in NOT_IN_PARTITION}
    material = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return crypto.digest(material.encode())


def scope_of(scope: CacheScope, tenant_id: object) -> str:
    if scope == "tenant":
        return str(tenant_id)
    if scope == "global":
        return entries.GLOBAL_SCOPE
    raise ValueError(f"unknown cache scope {scope!r}")  # fail closed, as the exact cache


@dataclass
class Probe:
    """One job's look at the semantic cache: what it found, and what to remember after."""

    partition: entries.Partition
    vector: list[float]
    min_similarity: float
    hit: entries.Match | None = None
    # The budget left cannot cover the embedding call: the job ends as the chain would end it.
    refused: str | None = None

    def outcome(self, findings: list[dict[str, Any]]) -> store.Outcome | None:
        if self.refused is not None:
            return store.Outcome(
                status=JobStatus.FAILED, error_code=JobErrorCode.BUDGET_EXCEEDED,
                error_message=self.refused, guardrails=findings,
                route=[{"link": self.partition.embedding_model, "skipped": "budget_exceeded"}],
            )  # fmt: skip
        if self.hit is None:
            return None
        route = [
            {
                "link": "semantic_cache",
                "result": "ok",
                "similarity": round(self.hit.similarity, 4),
                "source_job_id": str(self.hit.source_job_id),
            }
        ]
        cached = CachedResult(self.hit.result, self.hit.provider or "", self.hit.model or "")
        return from_cache(cached, route, findings)


class SemanticCache:
    def __init__(
        self,
        engine: Engine,
        embedder: Embedder,
        prices: PriceTable,
        *,
        scope: CacheScope,
        default_threshold: float,
        ttl_s: float,
        per_template: dict[str, float | bool] | None = None,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.prices = prices
        self.scope = scope
        self.default_threshold = default_threshold
        self.ttl_s = ttl_s
        self.per_template = per_template or {}
        self._off: str | None = None
        self._checked = False
        self._lock = threading.Lock()

    def off_reason(self) -> str | None:
        """Why the cache is off on this database/config (checked and logged once), or None."""
        if not self._checked:
            with self._lock:
                if not self._checked:
                    reason = (
                        None
                        if self.embedder.is_configured()
                        else f"no API key for the embedding model {self.embedder.link}"
                    )
                    reason = reason or entries.unavailable(self.engine)
                    if reason is not None:
                        log.warning("semantic cache is off: %s", reason)
                    self._off, self._checked = reason, True
        return self._off

    def probe(
        self,
        job: store.ClaimedJob,
        owner: str,
        template: Template,
        chain: list[str],
        calls: ProviderCalls,
    ) -> Probe | None:
        """Embed the (guarded) question and look for a close answer. None: the job does not
        use the semantic cache (ineligible, cache off, or the embedding failed)."""
        min_similarity = threshold(template, job.params, self.default_threshold, self.per_template)
        if (
            min_similarity is None
            or estimate_tokens(job.input) > MAX_EMBED_TOKENS
            or self.off_reason() is not None
        ):
            return None
        partition = entries.Partition(
            scope=scope_of(self.scope, job.tenant_id),
            template=template.name,
            template_version=template.version,
            chain=",".join(chain),
            params_hash=params_hash(job.params),
            embedding_model=self.embedder.link,
        )
        # The embedding is a paid call: reserved against the budgets like any other.
        hold = None
        if calls.budgets is not None:
            hold = calls.budgets.reserve(
                job.tenant_id, job.batch_id, self.embedder.link, estimate_tokens(job.input), 0
            )
            if hold.refused is not None:
                return Probe(partition, [], min_similarity, refused=hold.refused.message())
        with hooks.stage("cache.semantic.embed"):
            vector = self._embed(job, owner, calls, hold)
        if vector is None:
            return None
        probe = Probe(partition, vector, min_similarity)
        if job.params.get("no_cache"):
            return probe  # a fresh answer asked for: not looked up, still remembered
        try:
            with hooks.stage("cache.semantic.lookup"):
                probe.hit = entries.nearest(
                    self.engine, probe.partition, vector, min_similarity,
                    None if self.scope == "global" else job.tenant_id,
                )  # fmt: skip
        except store.UNAVAILABLE:
            raise
        except Exception:
            log.exception("semantic cache lookup failed on job %s; continuing without", job.id)
            SEMANTIC_CACHE_LOOKUPS.labels("error").inc()
            return None
        SEMANTIC_CACHE_LOOKUPS.labels("miss" if probe.hit is None else "hit").inc()
        return probe

    def remember(self, probe: Probe, job: store.ClaimedJob, outcome: object) -> None:
        """Keep the job's answer for later questions: only a succeeded, complete answer of the
        chain (the output guardrails and review accepted it), never a cache hit's."""
        if not (
            isinstance(outcome, store.Outcome)
            and outcome.status == JobStatus.SUCCEEDED
            and outcome.result is not None
            and not outcome.cache_hit
            and output_review.finish_reason(outcome.route) == "stop"
        ):
            return
        try:
            entries.insert(self.engine, probe.partition, probe.vector, job.id, self.ttl_s)
        except store.UNAVAILABLE:
            raise
        except Exception:
            log.exception("semantic cache write failed on job %s", job.id)

    def _embed(
        self, job: store.ClaimedJob, owner: str, calls: ProviderCalls, hold: Hold | None
    ) -> list[float] | None:
        link = self.embedder.link
        try:
            embedding = self.embedder.embed(job.input)
        except ProviderError as exc:
            tokens = exc.usage.input_tokens if exc.usage else 0
            attempt = self._attempt(calls, exc.code, tokens, 0.0, exc)
            calls.record(job, owner, link, attempt, hold)
            log.warning("embedding failed on job %s (%s): semantic cache skipped", job.id, exc.code)
            SEMANTIC_CACHE_LOOKUPS.labels("error").inc()
            return None
        tokens = embedding.usage.input_tokens
        calls.record(
            job, owner, link, self._attempt(calls, "ok", tokens, embedding.latency_ms), hold
        )
        return embedding.vector

    def _attempt(
        self,
        calls: ProviderCalls,
        outcome: str,
        input_tokens: int,
        latency_ms: float,
        error: ProviderError | None = None,
    ) -> store.AttemptRecord:
        link = self.embedder.link
        provider, _, model = link.partition(":")
        return store.AttemptRecord(
            provider=provider, model=model, outcome=outcome, latency_ms=round(latency_ms, 3),
            http_status=error.status if error else 200,
            error_code=error.code if error else None,
            error_message=error.message[:500] if error else None,
            input_tokens=input_tokens, output_tokens=0, cached_tokens=0,
            cost_usd=self.prices.cost(link, input_tokens, 0, 0),
            worker=calls.worker_name, output=None,
        )  # fmt: skip

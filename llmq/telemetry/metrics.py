"""Every Prometheus metric llmq exports, in one place (docs/observability.md lists them).

Two kinds:
- Event counters and histograms, incremented where things happen (pipeline, cache, circuit,
  pricing, budgets).
  They live in the process that does the work: a worker process serves them on
  LLMQ_WORKER_METRICS_PORT, the API on GET /metrics.
- System state read at scrape time (jobs by status from Postgres, queue depth and circuit state
  from Redis) by `StateCollector`, served by the API only (its own registry, so several apps in
  one process never export a series twice), and never by a fleet of workers N times over. The
  figures are cached for LLMQ_METRICS_CACHE_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from llmq import store
from llmq.resilience.adaptive import learned_views

log = logging.getLogger(__name__)


class CircuitStates(Protocol):
    """What the collector needs of the circuit breaker (llmq.resilience.circuit, which imports
    this module for its counter): the state of one link."""

    def state(self, link: str) -> str: ...


# Provider calls take from ~50 ms to minutes; jobs include queueing and retries.
PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# --- jobs ------------------------------------------------------------------------------------
JOBS_FINISHED = Counter(
    "llmq_jobs_finished_total",
    "Jobs that reached a terminal state in this process, by status and tenant.",
    ["status", "tenant"],
)
JOB_DURATION = Histogram(
    "llmq_job_duration_seconds",
    "Submission to terminal state (queueing, retries and backoffs included).",
    ["status"],
    buckets=JOB_BUCKETS,
)
JOB_RUN_DURATION = Histogram(
    "llmq_job_run_seconds",
    "Worker time of one delivery of a job (claim to finish or hand-back).",
    ["outcome"],
    buckets=JOB_BUCKETS,
)
JOBS_DEFERRED = Counter(
    "llmq_jobs_deferred_total",
    "Jobs handed back to the queue to wait (long backoff or shared rate limit).",
)

# --- provider calls --------------------------------------------------------------------------
PROVIDER_DURATION = Histogram(
    "llmq_provider_request_duration_seconds",
    "Latency of one provider call (one attempt), by outcome (ok or the error code).",
    ["provider", "model", "outcome"],
    buckets=PROVIDER_BUCKETS,
)
TOKENS = Counter(
    "llmq_tokens_total",
    "Tokens reported by providers, by kind (input, output, cached).",
    ["provider", "model", "tenant", "kind"],
)
COST = Counter(
    "llmq_cost_usd_total",
    "Cost of provider calls in US dollars (priced models only).",
    ["provider", "model", "tenant"],
)
MISSING_PRICE = Counter(
    "llmq_missing_price_total",
    "Provider calls whose model has no price: their cost is unknown (job cost NULL).",
    ["provider", "model"],
)
RETRIES = Counter(
    "llmq_provider_retries_total",
    "Calls retried on the same link after a retryable error.",
    ["provider", "model", "reason"],
)
FALLBACKS = Counter(
    "llmq_fallbacks_total",
    "Times a job left a link of its chain for the next one, by the reason it left.",
    ["link", "reason"],
)
RATE_LIMITED = Counter(
    "llmq_rate_limit_deferrals_total",
    "Calls held back by the shared provider rate limit: waited in place or job handed back.",
    ["link", "action"],
)

# --- guardrails, cache, circuit --------------------------------------------------------------
GUARDRAIL_BLOCKS = Counter(
    "llmq_guardrail_blocks_total",
    "Jobs blocked by a guardrail, by stage (input, output) and rule.",
    ["stage", "rule"],
)
CACHE_LOOKUPS = Counter(
    "llmq_cache_lookups_total",
    "Result-cache lookups, by result (hit, miss, error).",
    ["result"],
)
SEMANTIC_CACHE_LOOKUPS = Counter(
    "llmq_semantic_cache_lookups_total",
    "Semantic-cache lookups, by result (hit, miss, error).",
    ["result"],
)
DEDUP = Counter(
    "llmq_cache_dedup_total",
    "In-flight de-duplication of identical jobs (llmq/execution/dedup.py), by event: waited "
    "(a job found an identical one running and handed its slot back), served (waiting jobs "
    "woken with the answer ready), leader_failed (waiting jobs woken to compute themselves), "
    "computed_alone "
    "(a job computed itself because the last leader failed).",
    ["event"],
)
CIRCUIT_OPENED = Counter(
    "llmq_circuit_opened_total",
    "Times a provider:model circuit opened (this process saw the transition).",
    ["link"],
)

# --- cost ------------------------------------------------------------------------------------
BUDGET_SOFT_LIMIT = Counter(
    "llmq_budget_soft_limit_total",
    "Budgets that reached their soft limit (80% by default), once per budget and period.",
    ["scope"],
)
BUDGET_EXCEEDED = Counter(
    "llmq_budget_exceeded_total",
    "Provider calls refused because the budget left could not cover their estimate.",
    ["scope"],
)

# --- API -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "llmq_http_requests_total",
    "API requests, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "llmq_http_request_duration_seconds",
    "API request latency, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# ---------------------------------------------------------------------------------------------
# Scrape-time state


class StateCollector(Collector):
    """Jobs by status, queue depth per queue and circuit state per link, read at scrape time."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        breaker: CircuitStates,
        links: list[str],
        queue_depths: Callable[[redis.Redis], dict[str, int]],
        cache_s: float,
    ) -> None:
        self._engine = engine
        self._client = client
        self._breaker = breaker
        self._links = links
        self._queue_depths = queue_depths
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> list[Metric]:
        return []  # state is read at scrape time only, never at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_s:
                self._cached = (now, self._read())
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        out: list[Metric] = []
        up = GaugeMetricFamily(
            "llmq_backend_up", "Whether the scrape could read the backend.", labels=["backend"]
        )
        try:
            jobs = GaugeMetricFamily("llmq_jobs", "Jobs in Postgres by status.", labels=["status"])
            for status, n in store.job_counts(self._engine).items():
                jobs.add_metric([status], n)
            out.append(jobs)
            up.add_metric(["postgres"], 1)
        except SQLAlchemyError as exc:
            log.warning("metrics: job counts unavailable: %s", type(exc).__name__)
            up.add_metric(["postgres"], 0)
        try:
            depth = GaugeMetricFamily(
                "llmq_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
            )
            for queue, n in self._queue_depths(self._client).items():
                depth.add_metric([queue], n)
            circuits = GaugeMetricFamily(
                "llmq_circuit_state",
                "1 for the current state of each provider:model circuit, else 0.",
                labels=["link", "state"],
            )
            for link in self._links:
                current = self._breaker.state(link)
                for state in ("closed", "open", "half_open"):
                    circuits.add_metric([link, state], 1 if current == state else 0)
            learned = GaugeMetricFamily(
                "llmq_rate_limit_learned",
                "Per-window limit each provider:model announced in its rate-limit headers.",
                labels=["link", "account", "kind"],
            )
            remaining = GaugeMetricFamily(
                "llmq_rate_limit_remaining",
                "What the provider said was left of that limit, at its last answer.",
                labels=["link", "account", "kind"],
            )
            for view in learned_views(self._client):
                for kind, limit, left in (
                    ("requests", view.requests_limit, view.requests_remaining),
                    ("tokens", view.tokens_limit, view.tokens_remaining),
                ):
                    labels = [view.link, view.account or "", kind]
                    if limit is not None:
                        learned.add_metric(labels, limit)
                    if left is not None:
                        remaining.add_metric(labels, left)
            out += [depth, circuits, learned, remaining]
            up.add_metric(["redis"], 1)
        except redis.RedisError as exc:
            log.warning("metrics: Redis figures unavailable: %s", type(exc).__name__)
            up.add_metric(["redis"], 0)
        out.append(up)
        return out

"""The pipeline's one-line hooks: each records a metric, a structured log line and (when
tracing is on) span attributes for one event, so `llmq/execution/pipeline.py` stays about jobs."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from llmq.store import AttemptRecord, ClaimedJob
from llmq.telemetry import logs, metrics, tracing

log = logging.getLogger("llmq.jobs")


@dataclass
class JobWatch:
    """What one delivery of a job did, summed for its closing log line."""

    job: ClaimedJob
    span: Any
    started: float = field(default_factory=time.perf_counter)
    result: Any = None  # a repository.Outcome or a pipeline.Deferred, set by the pipeline
    recorded: bool = True  # False when the finish lost its lease (another worker owns the job)
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)


_watch: contextvars.ContextVar[JobWatch | None] = contextvars.ContextVar("llmq_job", default=None)
_unpriced_logged: set[str] = set()


@contextlib.contextmanager
def job(claimed: ClaimedJob) -> Iterator[JobWatch]:
    """Log context, span and metrics for one delivery of a job; set `.result` before leaving."""
    tenant = str(claimed.tenant_id)
    with (
        logs.bound(job_id=str(claimed.id), batch_id=claimed.batch_id and str(claimed.batch_id),
                   tenant=tenant, delivery=claimed.deliveries),
        tracing.span("llmq.job", job_id=str(claimed.id), tenant=tenant,
                     template=claimed.template, delivery=claimed.deliveries) as span,
    ):  # fmt: skip
        watch = JobWatch(claimed, span)
        token = _watch.set(watch)
        try:
            yield watch
        finally:
            _watch.reset(token)
            _job_done(watch)


def _job_done(watch: JobWatch) -> None:
    run_s = time.perf_counter() - watch.started
    result = watch.result
    status = getattr(result, "status", None)
    if result is None:
        outcome = "error"  # infrastructure error: the lease expires and the job comes back
    elif status is None:
        outcome = "deferred"
        metrics.JOBS_DEFERRED.inc()
    else:
        outcome = str(status)
    metrics.JOB_RUN_DURATION.labels(outcome).observe(run_s)
    route = getattr(result, "route", None) or []
    for entry in route[:-1]:  # every link left for the next one
        reason = entry.get("skipped") or (entry.get("result") if "tries" in entry else None)
        if reason:
            metrics.FALLBACKS.labels(entry["link"], reason).inc()
    if status is not None and watch.recorded:
        tenant = str(watch.job.tenant_id)
        metrics.JOBS_FINISHED.labels(outcome, tenant).inc()
        total_s = (datetime.now(UTC) - watch.job.created_at).total_seconds()
        metrics.JOB_DURATION.labels(outcome).observe(max(total_s, 0.0))
    tracing.set_attributes(watch.span, outcome=outcome, attempts=watch.attempts)
    log.info(
        "job %s",
        {"deferred": "deferred", "error": "interrupted"}.get(outcome, "finished"),
        extra={
            "status": outcome,
            "provider": getattr(result, "provider", None),
            "model": getattr(result, "model", None),
            "cache_hit": getattr(result, "cache_hit", None),
            "error_code": getattr(result, "error_code", None),
            "attempts": watch.attempts,
            "latency_ms": round(run_s * 1000, 3),
            "input_tokens": watch.input_tokens,
            "output_tokens": watch.output_tokens,
            "cost_usd": watch.cost_usd,
        },
    )


def stage(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span for one pipeline stage (guardrails, cache, provider call, ...)."""
    return tracing.span(f"llmq.{name}", **attributes)


def attempt(claimed: ClaimedJob, link: str, record: AttemptRecord, number: int | None) -> None:
    """One provider call was made and recorded (attempt `number`; None if the lease was lost)."""
    provider, model = record.provider, record.model
    metrics.PROVIDER_DURATION.labels(provider, model, record.outcome).observe(
        record.latency_ms / 1000
    )
    usage(claimed, link, record)
    watch = _watch.get()
    if watch is not None:
        watch.attempts += 1
        watch.input_tokens += record.input_tokens
        watch.output_tokens += record.output_tokens
        if watch.cost_usd is not None:
            watch.cost_usd = None if record.cost_usd is None else watch.cost_usd + record.cost_usd
    tracing.set_attributes(
            tracing.current_span(),
            provider=provider, model=model, outcome=record.outcome, attempt=number,
            input_tokens=record.input_tokens, output_tokens=record.output_tokens,
            http_status=record.http_status,
        )  # fmt: skip
    log.info(
        "provider call %s",
        record.outcome,
        extra={
            "provider": provider,
            "model": model,
            "attempt": number,
            "outcome": record.outcome,
            "http_status": record.http_status,
            "latency_ms": record.latency_ms,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cost_usd": record.cost_usd,
        },
    )


def usage(claimed: ClaimedJob, link: str, record: AttemptRecord) -> None:
    """A recorded attempt's tokens and cost, counted (the provider Batch lane's items count
    only here: a batch's turnaround is not a call's latency)."""
    provider, model = record.provider, record.model
    tenant = str(claimed.tenant_id)
    for kind, count in (
        ("input", record.input_tokens),
        ("output", record.output_tokens),
        ("cached", record.cached_tokens),
    ):
        if count:
            metrics.TOKENS.labels(provider, model, tenant, kind).inc(count)
    if record.cost_usd is None:
        metrics.MISSING_PRICE.labels(provider, model).inc()
        if link not in _unpriced_logged:
            _unpriced_logged.add(link)
            log.warning("no price for %s: its cost is recorded as unknown", link)
    elif record.cost_usd:
        metrics.COST.labels(provider, model, tenant).inc(float(record.cost_usd))


def retry(link: str, reason: str) -> None:
    provider, _, model = link.partition(":")
    metrics.RETRIES.labels(provider, model, reason).inc()


def rate_limited(link: str, *, handed_back: bool) -> None:
    metrics.RATE_LIMITED.labels(link, "deferred" if handed_back else "waited").inc()


def blocked(stage_name: str, rule: str) -> None:
    metrics.GUARDRAIL_BLOCKS.labels(stage_name, rule).inc()
    log.info("guardrail blocked the job", extra={"stage": stage_name, "rule": rule})

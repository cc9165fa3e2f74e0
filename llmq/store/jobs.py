"""The worker's side of a job: claim under a lease, record each attempt, finish, defer,
wake, renew leases; and the operators' retry of one job.

State changes are conditional UPDATEs fenced by the lease owner, so a redelivered message, a
second worker or a late finish from a worker whose lease expired is a harmless no-op.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from llmq.store import crypto
from llmq.store.base import autocommit
from llmq.store.evals import EvalWrite, write_evals
from llmq.store.models import TERMINAL_STATUSES, JobStatus


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    tenant_id: uuid.UUID
    batch_id: uuid.UUID | None
    template: str
    template_version: int
    input: str
    params: dict[str, Any]
    chain: list[str]
    attempts_made: int
    deliveries: int
    created_at: datetime
    # The client cancelled it while a previous delivery ran: finish it as cancelled.
    cancel_requested: bool
    # Seconds since the first delivery started: the job's deadline counts from there, across
    # redeliveries and backoffs (Postgres' clock, so workers' clocks do not matter).
    age_s: float
    # Seconds left in the batch's completion window (None: no window); no call starts after.
    expires_in_s: float | None = None
    parent_id: uuid.UUID | None = None  # a chunk or reduce job of a long document
    # "primary" (a client's job), or "shadow" / "judge": evaluation work (llmq/execution/shadow.py)
    kind: str = "primary"


_CLAIM_SQL = text(
    "UPDATE jobs SET status = 'running', lease_owner = :owner, "
    "lease_expires_at = now() + make_interval(secs => :lease), "
    # Taking over from a delivery that handed its lease over is not a lost delivery.
    "deliveries = deliveries + CASE WHEN lease_owner = CAST(:released AS text) THEN 0 ELSE 1 END, "
    "started_at = coalesce(started_at, now()), not_before = NULL "
    "WHERE id = :id AND (status IN ('queued', 'retrying') "
    "OR (status = 'running' AND (lease_expires_at < now() "
    "OR lease_owner = CAST(:released AS text)))) "
    "RETURNING id, tenant_id, batch_id, template, template_version, input, params, "
    "chain, attempts_made, deliveries, created_at, "
    "cancel_requested_at IS NOT NULL AS cancel_requested, "
    "extract(epoch FROM now() - coalesce(started_at, now()))::float8 AS age_s, "
    "(SELECT extract(epoch FROM b.expires_at - now())::float8 FROM batches b "
    "WHERE b.id = jobs.batch_id) AS expires_in_s, "
    "parent_id, kind"
)


def claim_job(
    engine: Engine, job_id: str, owner: str, lease_s: float, released: str | None = None
) -> ClaimedJob | None:
    """Take the job for `owner` if it is waiting, or running under an expired lease, or running
    under the lease of `released`: a delivery that lost Postgres after its claim and handed its
    lease over to the next delivery (pipeline.LeaseHandedOver) instead of letting it expire."""
    with autocommit(engine) as conn:
        row = conn.execute(
            _CLAIM_SQL,
            {"id": job_id, "owner": owner, "lease": lease_s, "released": released},
        ).first()
    if row is None:
        return None
    fields = row._asdict()
    fields["input"] = crypto.decrypt(fields["input"])
    fields["params"] = crypto.open_params(fields["params"])
    return ClaimedJob(**fields)


@dataclass(frozen=True)
class AttemptRecord:
    provider: str
    model: str
    outcome: str  # "ok" or the error code
    latency_ms: float
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal | None = None
    worker: str | None = None
    output: str | None = None
    # A provider Batch lane call: its cost on the sync lane (GET /v1/usage's saved_usd).
    sync_cost_usd: Decimal | None = None


@dataclass(frozen=True)
class RecordedAttempt:
    attempt_no: int
    # Read in the same statement, so cancelling costs the worker no extra query.
    cancel_requested: bool


_RECORD_ATTEMPT_SQL = text(
    "WITH j AS (UPDATE jobs SET attempts_made = attempts_made + 1, "
    "lease_expires_at = now() + make_interval(secs => :lease) "
    "WHERE id = :id AND lease_owner = :owner AND status = 'running' "
    "RETURNING tenant_id, attempts_made, cancel_requested_at), "
    "ins AS (INSERT INTO attempts (job_id, tenant_id, attempt_no, provider, model, "
    "outcome, http_status, error_code, error_message, latency_ms, input_tokens, "
    "output_tokens, cached_tokens, cost_usd, worker, output, sync_cost_usd) "
    "SELECT :id, j.tenant_id, j.attempts_made, :provider, :model, :outcome, "
    ":http_status, :error_code, :error_message, :latency_ms, :input_tokens, "
    ":output_tokens, :cached_tokens, :cost_usd, :worker, :output, :sync_cost_usd FROM j "
    "RETURNING attempt_no) "
    "SELECT ins.attempt_no, j.cancel_requested_at IS NOT NULL FROM ins, j"
)


def record_attempt(
    engine: Engine, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
) -> RecordedAttempt | None:
    """Insert the attempt if we still hold the job (None if we lost it).

    The attempt number comes from the same conditional UPDATE that renews the lease, so two
    workers can never write the same attempt and a fenced-off worker writes none.
    """
    with autocommit(engine) as conn:
        row = conn.execute(
            _RECORD_ATTEMPT_SQL,
            {
                "id": job_id,
                "owner": owner,
                "lease": lease_s,
                **attempt.__dict__,
                "output": crypto.encrypt_opt(attempt.output),
            },
        ).first()
    return None if row is None else RecordedAttempt(row[0], row[1])


def prior_attempts(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT attempt_no, provider, model, outcome, output, worker FROM attempts "
                "WHERE job_id = :id "
                # Attempts before a batch retry belong to the earlier run.
                "AND attempt_no > (SELECT attempts_floor FROM jobs WHERE id = :id) "
                "ORDER BY attempt_no"
            ),
            {"id": job_id},
        ).mappings()
        return [{**row, "output": crypto.decrypt_opt(row["output"])} for row in rows]


@dataclass(frozen=True)
class Outcome:
    status: str
    result: str | None = None
    provider: str | None = None
    model: str | None = None
    cache_hit: bool = False
    error_code: str | None = None
    error_message: str | None = None
    route: list[dict[str, Any]] | None = None
    guardrails: list[dict[str, Any]] | None = None
    # Written in the finishing transaction: the job's eval_log row and a primary's shadow job.
    evals: EvalWrite | None = None


_FINISH_SQL = text(
    "UPDATE jobs SET status = :status, result = :result, provider = :provider, "
    "model = :model, cache_hit = :cache_hit, error_code = :error_code, "
    "error_message = :error_message, route = CAST(:route AS jsonb), "
    # Appended: the findings of the redaction at ingest stay on the record.
    "guardrails = jobs.guardrails || CAST(:guardrails AS jsonb), "
    "input_tokens = a.input_tokens, "
    "output_tokens = a.output_tokens, cost_usd = a.cost_usd, finished_at = now(), "
    "lease_owner = NULL, lease_expires_at = NULL "
    "FROM (SELECT coalesce(sum(input_tokens), 0) AS input_tokens, "
    "coalesce(sum(output_tokens), 0) AS output_tokens, "
    # An unpriced model makes the total unknown (NULL), never silently low.
    "CASE WHEN bool_or(cost_usd IS NULL) THEN NULL "
    "ELSE coalesce(sum(cost_usd), 0) END AS cost_usd "
    "FROM attempts WHERE job_id = :id) a "
    "WHERE jobs.id = :id AND jobs.lease_owner = :owner AND jobs.status = 'running'"
)


def finish_job(engine: Engine, job_id: uuid.UUID, owner: str, outcome: Outcome) -> bool:
    """Write the terminal state and roll the attempts up into the job's totals, once."""
    assert outcome.status in TERMINAL_STATUSES
    with autocommit(engine) if outcome.evals is None else engine.begin() as conn:
        result = conn.execute(
            _FINISH_SQL,
            {
                "id": job_id,
                "owner": owner,
                "status": outcome.status,
                "result": crypto.encrypt_opt(outcome.result),
                "provider": outcome.provider,
                "model": outcome.model,
                "cache_hit": outcome.cache_hit,
                "error_code": outcome.error_code,
                "error_message": outcome.error_message,
                "route": json.dumps(outcome.route or []),
                "guardrails": json.dumps(outcome.guardrails or []),
            },
        )
        if result.rowcount == 1 and outcome.evals is not None:
            write_evals(conn, job_id, outcome.evals)
        return result.rowcount == 1


_DEFER_SQL = text(
    "UPDATE jobs SET status = :status, deliveries = deliveries - 1, "
    "not_before = now() + make_interval(secs => :delay), dispatched_at = NULL, "
    "lease_owner = NULL, lease_expires_at = NULL, route = CAST(:route AS jsonb) "
    "WHERE id = :id AND lease_owner = :owner AND status = 'running'"
)


def defer_job(
    engine: Engine,
    job_id: uuid.UUID,
    owner: str,
    delay_s: float,
    route: list[dict[str, Any]],
    status: str = JobStatus.RETRYING,
) -> bool:
    """Give the job back to wait `delay_s` (a long backoff) without holding a worker slot.
    `status` is what it shows meanwhile: `retrying`, or `queued` (waiting for an identical job).

    A planned hand-back is not a lost delivery, so it does not count towards max_deliveries."""
    assert status in (JobStatus.RETRYING, JobStatus.QUEUED)
    with autocommit(engine) as conn:
        result = conn.execute(
            _DEFER_SQL,
            {
                "id": job_id,
                "owner": owner,
                "delay": delay_s,
                "route": json.dumps(route),
                "status": str(status),
            },
        )
        return result.rowcount == 1


_WAKE_SQL = text(
    "UPDATE jobs SET not_before = NULL, dispatched_at = now() "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('queued', 'retrying') "
    "RETURNING id::text, priority"
)


def wake_jobs(engine: Engine, job_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Handed-back jobs to run now rather than after their delay: marked dispatched, returned
    as (id, priority) for publishing (jobs no longer waiting are left alone)."""
    if not job_ids:
        return []
    with autocommit(engine) as conn:
        rows = conn.execute(_WAKE_SQL, {"ids": list(job_ids)})
        return [(r[0], r[1]) for r in rows]


def renew_leases(engine: Engine, owner_by_job: dict[str, str], lease_s: float) -> None:
    if not owner_by_job:
        return
    with autocommit(engine) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:owners AS text[])) AS o(id, owner) "
                "WHERE jobs.id = o.id AND jobs.lease_owner = o.owner AND jobs.status = 'running'"
            ),
            {"lease": lease_s, "ids": list(owner_by_job), "owners": list(owner_by_job.values())},
        )


# Operators (llmq jobs ...): not tenant-scoped, run with database access


def job_ending(engine: Engine, job_id: str) -> tuple[str, str | None] | None:
    """(status, error_code) of a job as its row says now (workers: how a task ended)."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, error_code FROM jobs WHERE id = :id"), {"id": job_id}
        ).first()
    return (row[0], row[1]) if row is not None else None


def get_job_owner(engine: Engine, job_id: uuid.UUID) -> uuid.UUID | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one_or_none()


def retry_job(engine: Engine, job_id: uuid.UUID) -> tuple[str, str] | None:
    """Put a failed, expired, blocked or cancelled job back in its queue as if new: a fresh
    deadline, delivery count and retry budget (attempts_floor, as a batch retry does; earlier
    attempts stay, and so does their cost).
    Marked dispatched: the caller publishes it (undo_dispatch if that fails). Returns
    (job id, priority), or None when the job is not in a retryable state."""
    with autocommit(engine) as conn:
        row = conn.execute(
            text(
                "UPDATE jobs SET status = 'queued', result = NULL, provider = NULL, "
                "model = NULL, cache_hit = false, error_code = NULL, error_message = NULL, "
                "route = '[]', guardrails = '[]', deliveries = 0, started_at = NULL, "
                "attempts_floor = attempts_made, finished_at = NULL, not_before = NULL, "
                "cancel_requested_at = NULL, lease_owner = NULL, lease_expires_at = NULL, "
                # Published now by the caller: a provider Batch lane job re-runs on the sync lane.
                "dispatched_at = now(), lane = 'sync', provider_batch_id = NULL "
                "WHERE id = :id AND status IN ('failed', 'expired', 'blocked', 'cancelled') "
                "RETURNING id::text, priority"
            ),
            {"id": job_id},
        ).first()
    return None if row is None else (row[0], row[1])

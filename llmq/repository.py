"""Every read and write of jobs, batches, attempts and keys: the only module that speaks SQL.

State changes are conditional UPDATEs fenced by the lease owner, so a redelivered message, a
second worker or a late finish from a worker whose lease expired is a harmless no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.db.models import TERMINAL_STATUSES, JobStatus

KEY_PREFIX = "llmq_"


@contextlib.contextmanager
def _statement(engine: Engine) -> Iterator[Connection]:
    """For writes that are one statement: run it in autocommit, which saves the BEGIN and
    COMMIT round trips on the hot path (the statement is atomic on its own)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


# ---------------------------------------------------------------------------------------------
# Tenants and API keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(engine: Engine, tenant_name: str, *, admin: bool = False) -> str:
    """Create the tenant if needed and return a new key. The key is shown once, stored hashed."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        tenant_id = conn.execute(
            text(
                "INSERT INTO tenants (id, name) VALUES (:id, :name) "
                "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"
            ),
            {"id": uuid.uuid4(), "name": tenant_name},
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin) "
                "VALUES (:id, :tenant_id, :key_hash, :prefix, :admin)"
            ),
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "key_hash": hash_key(key),
                "prefix": key[: len(KEY_PREFIX) + 6],
                "admin": admin,
            },
        )
    return key


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    is_admin: bool


def authenticate(engine: Engine, key: str) -> Principal | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT k.id, k.tenant_id, k.is_admin, t.name FROM api_keys k "
                "JOIN tenants t ON t.id = k.tenant_id "
                "WHERE k.key_hash = :h AND k.revoked_at IS NULL"
            ),
            {"h": hash_key(key)},
        ).first()
    if row is None:
        return None
    return Principal(
        tenant_id=row.tenant_id, tenant_name=row.name, key_id=row.id, is_admin=row.is_admin
    )


def list_api_keys(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT k.id, k.prefix, t.name AS tenant, k.is_admin, k.created_at, k.revoked_at "
                "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id ORDER BY k.created_at"
            )
        ).mappings()
        return [dict(row) for row in rows]


def revoke_api_key(engine: Engine, key_id_or_prefix: str) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL "
                "AND (id::text = :v OR prefix = :v)"
            ),
            {"v": key_id_or_prefix},
        )
        return result.rowcount


# ---------------------------------------------------------------------------------------------
# Submission


@dataclass(frozen=True)
class NewJob:
    input: str
    custom_id: str | None = None
    params: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    # Findings of the redaction at ingest (counts only), kept on the job record.
    guardrails: list[dict[str, Any]] | None = None


def _copy_text(value: object) -> str:
    """Escape one field for COPY ... FROM STDIN in text format."""
    if value is None:
        return "\\N"
    if isinstance(value, int):
        return str(value)
    s = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# Per-row columns first, then the columns every job of a batch shares (escaped once).
_JOB_COPY_COLUMNS = (
    "id", "seq", "custom_id", "input", "params", "metadata", "guardrails",
    "tenant_id", "batch_id", "status", "priority", "template", "template_version", "chain",
)  # fmt: skip


def _copy_jobs(conn: Connection, shared: Sequence[object], items: Sequence[NewJob]) -> None:
    """COPY is the fast path for big batches. Built as one text buffer; identical params or
    metadata objects (the usual case: the batch's defaults) are serialized once."""
    raw = conn.connection.driver_connection
    assert raw is not None
    suffix = "\t".join(_copy_text(v) for v in shared) + "\n"
    # Keyed by identity; the object is kept alive in the value so its id cannot be reused.
    encoded: dict[int, tuple[object, str]] = {}

    def cached(value: dict[str, Any] | None) -> str:
        if not value:
            return "{}"
        hit = encoded.get(id(value))
        if hit is None:
            hit = encoded[id(value)] = (value, _copy_text(value))
        return hit[1]

    random = os.urandom
    lines = [
        "\t".join(
            (
                str(uuid.UUID(bytes=random(16), version=4)),
                str(seq),
                _copy_text(item.custom_id),
                _copy_text(item.input),
                cached(item.params),
                cached(item.meta),
                _copy_text(item.guardrails) if item.guardrails else "[]",
                suffix,
            )
        )
        for seq, item in enumerate(items)
    ]
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY jobs ({', '.join(_JOB_COPY_COLUMNS)}) FROM STDIN") as copy,
    ):
        copy.write("".join(lines))


def insert_batch(
    engine: Engine,
    *,
    tenant_id: uuid.UUID,
    template: str,
    template_version: int,
    priority: str,
    chain: list[str],
    meta: dict[str, Any],
    items: Sequence[NewJob],
    also: Callable[[Connection, uuid.UUID], None] | None = None,
) -> uuid.UUID:
    """Insert a batch and all its jobs in one transaction: all rows or none.

    `also` writes more rows for the batch in the same transaction (the compat APIs' records)."""
    batch_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, tenant_id, template, priority, chain, metadata, "
                "item_count) VALUES (:id, :tenant_id, :template, :priority, "
                "CAST(:chain AS jsonb), CAST(:meta AS jsonb), :n)"
            ),
            {
                "id": batch_id,
                "tenant_id": tenant_id,
                "template": template,
                "priority": priority,
                "chain": json.dumps(chain),
                "meta": json.dumps(meta),
                "n": len(items),
            },
        )
        shared = (str(tenant_id), str(batch_id), "queued", priority, template,
                  template_version, chain)  # fmt: skip
        _copy_jobs(conn, shared, items)
        if also is not None:
            also(conn, batch_id)
    return batch_id


def insert_job(
    engine: Engine,
    *,
    tenant_id: uuid.UUID,
    template: str,
    template_version: int,
    priority: str,
    chain: list[str],
    item: NewJob,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    with _statement(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, custom_id, priority, template, "
                "template_version, input, params, chain, metadata, dispatched_at, guardrails) "
                "VALUES (:id, :tenant_id, :custom_id, :priority, :template, :version, :input, "
                "CAST(:params AS jsonb), CAST(:chain AS jsonb), CAST(:meta AS jsonb), now(), "
                "CAST(:guardrails AS jsonb))"
            ),
            {
                "id": job_id,
                "tenant_id": tenant_id,
                "custom_id": item.custom_id,
                "priority": priority,
                "template": template,
                "version": template_version,
                "input": item.input,
                "params": json.dumps(item.params or {}),
                "chain": json.dumps(chain),
                "meta": json.dumps(item.meta or {}),
                "guardrails": json.dumps(item.guardrails or []),
            },
        )
    return job_id


def take_batch_chunk_for_dispatch(
    engine: Engine, batch_id: uuid.UUID | str, limit: int
) -> list[tuple[str, str]]:
    """Mark up to `limit` of a batch's unpublished jobs as dispatched and return them.

    Marking first, in its own short transaction, keeps row locks off the jobs while their
    messages are published (workers claim them at once). The caller publishes, and calls
    `undo_dispatch` if publishing fails.
    """
    with _statement(engine) as conn:
        rows = conn.execute(
            text(
                "UPDATE jobs SET dispatched_at = now() WHERE id IN (SELECT id FROM jobs "
                "WHERE batch_id = :b AND status = 'queued' AND dispatched_at IS NULL "
                "ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING id::text, priority, seq"
            ),
            {"b": str(batch_id), "n": limit},
        ).all()
    return [(row[0], row[1]) for row in sorted(rows, key=lambda r: r[2])]


def undo_dispatch(engine: Engine, job_ids: Sequence[str]) -> None:
    """Publishing failed: leave these jobs for the reconciler."""
    with _statement(engine) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET dispatched_at = NULL WHERE id = ANY(CAST(:ids AS uuid[])) "
                "AND status IN ('queued', 'retrying')"
            ),
            {"ids": list(job_ids)},
        )


# ---------------------------------------------------------------------------------------------
# The worker's side: claim, record attempts, finish


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


def claim_job(engine: Engine, job_id: str, owner: str, lease_s: float) -> ClaimedJob | None:
    """Take the job for `owner` if it is waiting, or running under an expired lease."""
    with _statement(engine) as conn:
        row = conn.execute(
            text(
                "UPDATE jobs SET status = 'running', lease_owner = :owner, "
                "lease_expires_at = now() + make_interval(secs => :lease), "
                "deliveries = deliveries + 1, started_at = coalesce(started_at, now()), "
                "not_before = NULL "
                "WHERE id = :id AND (status IN ('queued', 'retrying') "
                "OR (status = 'running' AND lease_expires_at < now())) "
                "RETURNING id, tenant_id, batch_id, template, template_version, input, params, "
                "chain, attempts_made, deliveries, created_at, "
                "cancel_requested_at IS NOT NULL AS cancel_requested, "
                "extract(epoch FROM now() - coalesce(started_at, now()))::float8 AS age_s"
            ),
            {"id": job_id, "owner": owner, "lease": lease_s},
        ).first()
    if row is None:
        return None
    return ClaimedJob(**row._asdict())


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


@dataclass(frozen=True)
class RecordedAttempt:
    attempt_no: int
    # Read in the same statement, so cancelling costs the worker no extra query.
    cancel_requested: bool


def record_attempt(
    engine: Engine, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
) -> RecordedAttempt | None:
    """Insert the attempt if we still hold the job (None if we lost it).

    The attempt number comes from the same conditional UPDATE that renews the lease, so two
    workers can never write the same attempt and a fenced-off worker writes none.
    """
    with _statement(engine) as conn:
        row = conn.execute(
            text(
                "WITH j AS (UPDATE jobs SET attempts_made = attempts_made + 1, "
                "lease_expires_at = now() + make_interval(secs => :lease) "
                "WHERE id = :id AND lease_owner = :owner AND status = 'running' "
                "RETURNING tenant_id, attempts_made, cancel_requested_at), "
                "ins AS (INSERT INTO attempts (job_id, tenant_id, attempt_no, provider, model, "
                "outcome, http_status, error_code, error_message, latency_ms, input_tokens, "
                "output_tokens, cached_tokens, cost_usd, worker, output) "
                "SELECT :id, j.tenant_id, j.attempts_made, :provider, :model, :outcome, "
                ":http_status, :error_code, :error_message, :latency_ms, :input_tokens, "
                ":output_tokens, :cached_tokens, :cost_usd, :worker, :output FROM j "
                "RETURNING attempt_no) "
                "SELECT ins.attempt_no, j.cancel_requested_at IS NOT NULL FROM ins, j"
            ),
            {"id": job_id, "owner": owner, "lease": lease_s, **attempt.__dict__},
        ).first()
    return None if row is None else RecordedAttempt(row[0], row[1])


def prior_attempts(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT attempt_no, provider, model, outcome, output FROM attempts "
                "WHERE job_id = :id ORDER BY attempt_no"
            ),
            {"id": job_id},
        ).mappings()
        return [dict(row) for row in rows]


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


def finish_job(engine: Engine, job_id: uuid.UUID, owner: str, outcome: Outcome) -> bool:
    """Write the terminal state and roll the attempts up into the job's totals, once."""
    assert outcome.status in TERMINAL_STATUSES
    with _statement(engine) as conn:
        result = conn.execute(
            text(
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
            ),
            {
                "id": job_id,
                "owner": owner,
                "status": outcome.status,
                "result": outcome.result,
                "provider": outcome.provider,
                "model": outcome.model,
                "cache_hit": outcome.cache_hit,
                "error_code": outcome.error_code,
                "error_message": outcome.error_message,
                "route": json.dumps(outcome.route or []),
                "guardrails": json.dumps(outcome.guardrails or []),
            },
        )
        return result.rowcount == 1


def defer_job(
    engine: Engine, job_id: uuid.UUID, owner: str, delay_s: float, route: list[dict[str, Any]]
) -> bool:
    """Give the job back to wait `delay_s` (a long backoff) without holding a worker slot.

    A planned hand-back is not a lost delivery, so it does not count towards max_deliveries."""
    with _statement(engine) as conn:
        result = conn.execute(
            text(
                "UPDATE jobs SET status = 'retrying', deliveries = deliveries - 1, "
                "not_before = now() + make_interval(secs => :delay), dispatched_at = NULL, "
                "lease_owner = NULL, lease_expires_at = NULL, route = CAST(:route AS jsonb) "
                "WHERE id = :id AND lease_owner = :owner AND status = 'running'"
            ),
            {"id": job_id, "owner": owner, "delay": delay_s, "route": json.dumps(route)},
        )
        return result.rowcount == 1


def renew_leases(engine: Engine, owner_by_job: dict[str, str], lease_s: float) -> None:
    if not owner_by_job:
        return
    with _statement(engine) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:owners AS text[])) AS o(id, owner) "
                "WHERE jobs.id = o.id AND jobs.lease_owner = o.owner AND jobs.status = 'running'"
            ),
            {"lease": lease_s, "ids": list(owner_by_job), "owners": list(owner_by_job.values())},
        )


# ---------------------------------------------------------------------------------------------
# Cancellation

# Job totals from its attempts, for jobs that end without their worker's finish_job (cancelled
# while waiting, or given up by the reconciler): what was spent is never dropped.
ROLLUP_SET = (
    "input_tokens = (SELECT coalesce(sum(a.input_tokens), 0) FROM attempts a "
    "WHERE a.job_id = jobs.id), "
    "output_tokens = (SELECT coalesce(sum(a.output_tokens), 0) FROM attempts a "
    "WHERE a.job_id = jobs.id), "
    "cost_usd = (SELECT CASE WHEN bool_or(a.cost_usd IS NULL) THEN NULL "
    "ELSE coalesce(sum(a.cost_usd), 0) END FROM attempts a WHERE a.job_id = jobs.id)"
)


@dataclass(frozen=True)
class Cancellation:
    cancelled: int  # were waiting: cancelled now, no provider call will start
    stopping: int  # were running: their workers stop at the next step


def cancel_jobs(
    engine: Engine,
    tenant_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> Cancellation | None:
    """Cancel one job or every live job of a batch; None when the tenant has no such thing.

    Waiting jobs end at once (a message still on the queue then finds nothing to claim);
    running jobs are flagged and their worker finishes them as cancelled at its next step."""
    assert (job_id is None) != (batch_id is None)
    scope = "job_id" if job_id is not None else "batch_id"
    column = "id" if job_id is not None else "batch_id"
    params = {"t": tenant_id, scope: job_id or batch_id}
    with engine.begin() as conn:
        if batch_id is not None:
            found = conn.execute(
                text(
                    "UPDATE batches SET cancelled_at = coalesce(cancelled_at, now()) "
                    "WHERE id = :batch_id AND tenant_id = :t RETURNING id"
                ),
                params,
            ).first()
        else:
            found = conn.execute(
                text("SELECT id FROM jobs WHERE id = :job_id AND tenant_id = :t"), params
            ).first()
        if found is None:
            return None
        cancelled = conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', error_code = 'cancelled', "
                "error_message = 'cancelled by the client', finished_at = now(), "
                f"not_before = NULL, cancel_requested_at = now(), {ROLLUP_SET} "
                f"WHERE {column} = :{scope} AND tenant_id = :t "
                "AND status IN ('queued', 'retrying')"
            ),
            params,
        ).rowcount
        stopping = conn.execute(
            text(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
                f"WHERE {column} = :{scope} AND tenant_id = :t AND status = 'running'"
            ),
            params,
        ).rowcount
    return Cancellation(cancelled=cancelled, stopping=stopping)


# ---------------------------------------------------------------------------------------------
# Reads for the API (always filtered by tenant)

JOB_COLUMNS = (
    "id, batch_id, custom_id, status, priority, template, template_version, result, provider, "
    "model, cache_hit, error_code, error_message, route, guardrails, input_tokens, "
    "output_tokens, cost_usd, attempts_made, created_at, started_at, finished_at, metadata"
)


def get_job(engine: Engine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id AND tenant_id = :t"),
                {"id": job_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        job = dict(row)
        job["attempts"] = [
            dict(a)
            for a in conn.execute(
                text(
                    "SELECT attempt_no, provider, model, outcome, http_status, error_code, "
                    "latency_ms, input_tokens, output_tokens, cached_tokens, cost_usd, worker, "
                    "created_at FROM attempts WHERE job_id = :id ORDER BY attempt_no"
                ),
                {"id": job_id},
            ).mappings()
        ]
        return job


def get_batch(engine: Engine, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT id, template, priority, chain, metadata, item_count, created_at, "
                    "cancelled_at FROM batches WHERE id = :id AND tenant_id = :t"
                ),
                {"id": batch_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        batch = dict(row)
        counts = {status.value: 0 for status in JobStatus}
        totals = conn.execute(
            text(
                "SELECT status, count(*) AS n, sum(input_tokens) AS input_tokens, "
                "sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, "
                "max(finished_at) AS last_finished FROM jobs WHERE batch_id = :id "
                "GROUP BY status"
            ),
            {"id": batch_id},
        ).mappings()
        input_tokens = output_tokens = 0
        cost = Decimal(0)
        last_finished: datetime | None = None
        for t in totals:
            counts[t["status"]] = t["n"]
            input_tokens += t["input_tokens"] or 0
            output_tokens += t["output_tokens"] or 0
            cost += t["cost_usd"] or 0
            if t["last_finished"] and (last_finished is None or t["last_finished"] > last_finished):
                last_finished = t["last_finished"]
        done = sum(counts[s] for s in TERMINAL_STATUSES)
        finished = done == batch["item_count"]
        if batch["cancelled_at"] is not None:
            status = "cancelled" if finished else "cancelling"
        else:
            status = "completed" if finished else "in_progress"
        batch.update(
            counts=counts,
            completed=done,
            status=status,
            finished_at=last_finished if done == batch["item_count"] else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
        )
        return batch


def get_batch_owner(engine: Engine, batch_id: uuid.UUID) -> uuid.UUID | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT tenant_id FROM batches WHERE id = :id"), {"id": batch_id}
        ).scalar_one_or_none()


def iter_batch_results(
    engine: Engine, batch_id: uuid.UUID, chunk: int = 1000
) -> Iterator[dict[str, Any]]:
    """Stream a batch's jobs in item order, a page at a time (keyset on seq): bounded memory."""
    last_seq = -1
    while True:
        with engine.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    text(
                        "SELECT seq, id, custom_id, status, result, provider, model, cache_hit, "
                        "error_code, error_message, input_tokens, output_tokens, cost_usd, "
                        "finished_at FROM jobs WHERE batch_id = :b AND seq > :s "
                        "ORDER BY seq LIMIT :n"
                    ),
                    {"b": batch_id, "s": last_seq, "n": chunk},
                ).mappings()
            ]
        yield from rows
        if len(rows) < chunk:
            return
        last_seq = rows[-1]["seq"]


# ---------------------------------------------------------------------------------------------
# The reconciler's queries

RECONCILE_LOCK_KEY = 0x6C6C6D71  # "llmq"


def try_reconcile_lock(conn: Connection) -> bool:
    """One reconciler at a time across all workers; released when the transaction ends."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RECONCILE_LOCK_KEY}
        ).scalar_one()
    )


def expire_leases(conn: Connection, max_deliveries: int) -> list[tuple[str, str, str]]:
    """Running jobs whose worker stopped renewing: back to queued, or failed after N tries."""
    rows = conn.execute(
        text(
            "UPDATE jobs SET "
            "status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' "
            "WHEN deliveries >= :max THEN 'failed' ELSE 'queued' END, "
            "error_code = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' "
            "WHEN deliveries >= :max THEN 'worker_lost' ELSE error_code END, "
            "error_message = CASE WHEN cancel_requested_at IS NOT NULL THEN "
            "'cancelled by the client' WHEN deliveries >= :max THEN "
            "'the job was interrupted ' || deliveries || ' times (worker died or timed out)' "
            "ELSE error_message END, "
            "finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR deliveries >= :max "
            "THEN now() ELSE NULL END, "
            "lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL, "
            f"{ROLLUP_SET} "
            "WHERE status = 'running' AND lease_expires_at < now() "
            "RETURNING id::text, status, priority"
        ),
        {"max": max_deliveries},
    )
    return [(r[0], r[1], r[2]) for r in rows]


def take_due_for_dispatch(conn: Connection, grace_s: float, limit: int) -> list[tuple[str, str]]:
    """Mark and return live jobs with no message on the queue: never published (past a grace
    period, so the API's own publish is not raced), or due after a backoff."""
    rows = conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = now() WHERE id IN (SELECT id FROM jobs "
            "WHERE status IN ('queued', 'retrying') AND dispatched_at IS NULL "
            "AND (not_before IS NULL OR not_before <= now()) "
            "AND (status = 'retrying' OR created_at < now() - make_interval(secs => :grace)) "
            "ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "RETURNING id::text, priority"
        ),
        {"grace": grace_s, "limit": limit},
    )
    return [(r[0], r[1]) for r in rows]


def forget_stale_dispatches(
    conn: Connection, priorities: Sequence[str], older_than_s: float
) -> int:
    """Jobs published long ago whose queue is now empty lost their message (a crash between
    marking and publishing, or a broker that dropped it): publish them again."""
    if not priorities:
        return 0
    return conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = NULL WHERE status = 'queued' "
            "AND priority = ANY(:p) AND dispatched_at < now() - make_interval(secs => :age)"
        ),
        {"p": list(priorities), "age": older_than_s},
    ).rowcount


def forget_dispatches(conn: Connection) -> int:
    """The broker lost its messages (restart or flush): every live job needs a new one."""
    return conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = NULL WHERE status IN ('queued', 'retrying') "
            "AND dispatched_at IS NOT NULL"
        )
    ).rowcount


# ---------------------------------------------------------------------------------------------
# Compatibility surfaces: OpenAI Files/Batches and Anthropic Message Batches (api/routes/compat_*)

COMPAT_BATCH_COLUMNS = (
    "id, api, batch_id, input_file_id, endpoint, completion_window, model, metadata, errors, "
    "created_at"
)


def insert_compat_file(
    engine: Engine,
    tenant_id: uuid.UUID,
    filename: str,
    purpose: str,
    content: bytes,
    size: int | None = None,
) -> dict[str, Any]:
    """`size` is the file's size as downloaded when that differs from the stored `content`."""
    with _statement(engine) as conn:
        row = conn.execute(
            text(
                "INSERT INTO compat_files (id, tenant_id, filename, purpose, bytes, content) "
                "VALUES (:id, :t, :filename, :purpose, :bytes, :content) "
                "RETURNING id, filename, purpose, bytes, created_at"
            ),
            {"id": uuid.uuid4(), "t": tenant_id, "filename": filename, "purpose": purpose,
             "bytes": len(content) if size is None else size, "content": content},
        ).mappings().one()  # fmt: skip
    return dict(row)


def get_compat_file(
    engine: Engine, tenant_id: uuid.UUID, file_id: uuid.UUID, *, with_content: bool = False
) -> dict[str, Any] | None:
    columns = "id, filename, purpose, bytes, created_at" + (", content" if with_content else "")
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(f"SELECT {columns} FROM compat_files WHERE id = :id AND tenant_id = :t"),
                {"id": file_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


@dataclass(frozen=True)
class CompatBatchRecord:
    api: str  # "openai" | "anthropic"
    input_file_id: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    model: str | None = None
    meta: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None  # set: the batch failed validation, no jobs


def _insert_compat_batch(
    conn: Connection,
    tenant_id: uuid.UUID,
    record: CompatBatchRecord,
    record_id: uuid.UUID,
    batch_id: uuid.UUID | None,
) -> None:
    conn.execute(
        text(
            "INSERT INTO compat_batches (id, tenant_id, api, batch_id, input_file_id, endpoint, "
            "completion_window, model, metadata, errors) VALUES (:id, :t, :api, :batch_id, "
            ":input_file_id, :endpoint, :completion_window, :model, CAST(:meta AS jsonb), "
            "CAST(:errors AS jsonb))"
        ),
        {"id": record_id, "t": tenant_id, "api": record.api, "batch_id": batch_id,
         "input_file_id": record.input_file_id, "endpoint": record.endpoint,
         "completion_window": record.completion_window, "model": record.model,
         "meta": json.dumps(record.meta or {}),
         "errors": json.dumps(record.errors) if record.errors is not None else None},
    )  # fmt: skip


def create_compat_batch(
    engine: Engine,
    *,
    tenant_id: uuid.UUID,
    record: CompatBatchRecord,
    chain: list[str],
    priority: str,
    items: Sequence[NewJob],
    rejected: dict[int, tuple[str, str]] | None = None,
) -> uuid.UUID:
    """The compat record and its native batch in one transaction. Items listed in `rejected`
    (position -> (error code, message)) are stored already failed, so they are never run but
    still answer in the results. A record with `errors` gets no native batch at all."""
    if record.errors is not None:
        record_id = uuid.uuid4()
        with engine.begin() as conn:
            _insert_compat_batch(conn, tenant_id, record, record_id, None)
        return record_id

    def also(conn: Connection, batch_id: uuid.UUID) -> None:
        _insert_compat_batch(conn, tenant_id, record, batch_id, batch_id)
        if rejected:
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'failed', error_code = r.code, "
                    "error_message = r.message, finished_at = now() "
                    "FROM unnest(CAST(:seqs AS int[]), CAST(:codes AS text[]), "
                    "CAST(:messages AS text[])) AS r(seq, code, message) "
                    "WHERE jobs.batch_id = :b AND jobs.seq = r.seq"
                ),
                {"b": batch_id, "seqs": list(rejected),
                 "codes": [c for c, _ in rejected.values()],
                 "messages": [m for _, m in rejected.values()]},
            )  # fmt: skip

    return insert_batch(
        engine, tenant_id=tenant_id, template="chat", template_version=1, priority=priority,
        chain=chain, meta=record.meta or {}, items=items, also=also,
    )  # fmt: skip


def get_compat_batch(
    engine: Engine, tenant_id: uuid.UUID, api: str, record_id: uuid.UUID
) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    f"SELECT {COMPAT_BATCH_COLUMNS} FROM compat_batches WHERE id = :id "
                    "AND tenant_id = :t AND api = :api AND deleted_at IS NULL"
                ),
                {"id": record_id, "t": tenant_id, "api": api},
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def list_compat_batches(
    engine: Engine,
    tenant_id: uuid.UUID,
    api: str,
    *,
    limit: int,
    after: uuid.UUID | None = None,
    before: uuid.UUID | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, a page at a time; `after`/`before` are ids of the previous page's ends.
    Returns the page and whether more exist beyond it (in the direction of travel)."""
    cursor, direction = (after, "<") if before is None else (before, ">")
    where = "tenant_id = :t AND api = :api AND deleted_at IS NULL"
    if cursor is not None:
        where += (
            f" AND (created_at, id) {direction} (SELECT created_at, id FROM compat_batches "
            "WHERE id = :cursor AND tenant_id = :t)"
        )
    order = "DESC" if direction == "<" else "ASC"
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                text(
                    f"SELECT {COMPAT_BATCH_COLUMNS} FROM compat_batches WHERE {where} "
                    f"ORDER BY created_at {order}, id {order} LIMIT :n"
                ),
                {"t": tenant_id, "api": api, "cursor": cursor, "n": limit + 1},
            ).mappings()
        ]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if direction == ">":
        rows.reverse()
    return rows, has_more


def delete_compat_batch(
    engine: Engine, tenant_id: uuid.UUID, api: str, record_id: uuid.UUID
) -> bool:
    """Hide the batch and drop its inputs and outputs; attempts (usage and cost) are kept."""
    with engine.begin() as conn:
        batch_id = conn.execute(
            text(
                "UPDATE compat_batches SET deleted_at = now() WHERE id = :id AND tenant_id = :t "
                "AND api = :api AND deleted_at IS NULL RETURNING batch_id"
            ),
            {"id": record_id, "t": tenant_id, "api": api},
        ).first()
        if batch_id is None:
            return False
        if batch_id[0] is not None:
            conn.execute(
                text("UPDATE jobs SET input = '', result = NULL WHERE batch_id = :b"),
                {"b": batch_id[0]},
            )
    return True

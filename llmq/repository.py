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
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from llmq.db.models import TERMINAL_STATUSES, JobStatus
from llmq.errors import UserError

KEY_PREFIX = "llmq_"

# Postgres refused or lost the connection (too many clients, a role's CONNECTION LIMIT, a
# restart, a statement timeout), or every pooled connection is busy: worth retrying later.
UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, PoolTimeout)


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


def create_api_key(
    engine: Engine,
    tenant_name: str,
    *,
    admin: bool = False,
    requests_per_min: int | None = None,
    items_per_min: int | None = None,
) -> str:
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
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin, "
                "rate_requests_per_min, rate_items_per_min) "
                "VALUES (:id, :tenant_id, :key_hash, :prefix, :admin, :rpm, :ipm)"
            ),
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "key_hash": hash_key(key),
                "prefix": key[: len(KEY_PREFIX) + 6],
                "admin": admin,
                "rpm": requests_per_min,
                "ipm": items_per_min,
            },
        )
    return key


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    is_admin: bool
    # The key's own per-minute limits; None = the settings' defaults.
    requests_per_min: int | None = None
    items_per_min: int | None = None


def authenticate(engine: Engine, key: str) -> Principal | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT k.id, k.tenant_id, k.is_admin, t.name, k.rate_requests_per_min, "
                "k.rate_items_per_min FROM api_keys k "
                "JOIN tenants t ON t.id = k.tenant_id "
                "WHERE k.key_hash = :h AND k.revoked_at IS NULL"
            ),
            {"h": hash_key(key)},
        ).first()
    if row is None:
        return None
    return Principal(
        tenant_id=row.tenant_id,
        tenant_name=row.name,
        key_id=row.id,
        is_admin=row.is_admin,
        requests_per_min=row.rate_requests_per_min,
        items_per_min=row.rate_items_per_min,
    )


_KEY_ROWS = (
    "SELECT k.id, k.prefix, t.name AS tenant, k.is_admin, k.created_at, k.revoked_at, "
    "k.rate_requests_per_min AS requests_per_min, k.rate_items_per_min AS items_per_min "
    "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
)


def list_api_keys(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(_KEY_ROWS + "ORDER BY k.created_at")).mappings()
        return [dict(row) for row in rows]


# A reference shorter than this names too little to be sure which key is meant (an id's first
# group is 8 characters; a key's first 8 are "llmq_" and 3 random ones).
MIN_KEY_REF_CHARS = 8


class KeyRefError(UserError):
    """A revoke that names no single active key."""


class LastAdminKey(UserError):
    """Revoking this key would leave no active admin key: nobody could manage keys over HTTP."""


def revoke_api_key(engine: Engine, ref: str) -> uuid.UUID:
    """Revoke the one active key `ref` names: its id or a prefix of it, a prefix of the key
    (the 11 characters `keys list` shows, or more), or the whole key. Never the last active
    admin key: the active admin rows are locked first, so of two concurrent revokes of the
    last two admin keys the second sees the first one's result and is refused."""
    ref = ref.strip()
    if len(ref) < MIN_KEY_REF_CHARS:
        raise KeyRefError(f"give at least {MIN_KEY_REF_CHARS} characters of the key or its id")
    with engine.begin() as conn:
        # starts_with, not LIKE: "_" in "llmq_" would be a wildcard. Only 11 characters of a
        # key are stored in the clear, so a longer prefix is matched on those (or its hash).
        rows = conn.execute(
            text(
                "SELECT id, is_admin, key_hash = :hash AS exact FROM api_keys "
                "WHERE revoked_at IS NULL AND (starts_with(id::text, lower(:ref)) "
                "OR starts_with(prefix, :ref) OR starts_with(:ref, prefix) OR key_hash = :hash)"
            ),
            {"ref": ref, "hash": hash_key(ref)},
        ).all()
        exact = [row for row in rows if row.exact]
        if len(exact) == 1:
            rows = exact
        if not rows:
            raise KeyRefError(f"no active key matches {ref!r}")
        if len(rows) > 1:
            raise KeyRefError(
                f"{ref!r} matches {len(rows)} active keys; give more of it or the key's id "
                "(llmq keys list)"
            )
        key_id, is_admin = rows[0].id, rows[0].is_admin
        if is_admin:
            admins = (
                conn.execute(
                    text(
                        "SELECT id FROM api_keys WHERE is_admin AND revoked_at IS NULL "
                        "ORDER BY id FOR UPDATE"
                    )
                )
                .scalars()
                .all()
            )
            if admins == [key_id]:
                raise LastAdminKey(
                    f"key {key_id} is the last active admin key; create another admin key "
                    "first (llmq keys create --admin), then revoke this one"
                )
        revoked = conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"),
            {"id": key_id},
        ).rowcount
        if not revoked:  # revoked by a concurrent call since it was found
            raise KeyRefError(f"no active key matches {ref!r}")
        return uuid.UUID(str(key_id))


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
    template_version: int | None = None  # an A/B-assigned version; None: the batch's


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
    "id", "seq", "custom_id", "input", "params", "metadata", "guardrails", "template_version",
    "tenant_id", "batch_id", "status", "priority", "template", "chain", "api_key_id",
)  # fmt: skip


def _copy_jobs(
    conn: Connection, shared: Sequence[object], items: Sequence[NewJob], version: int
) -> None:
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
                str(item.template_version or version),
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
    completion_window_s: int | None = None,
    webhook_url: str | None = None,
    idempotency: Idempotency | None = None,
    api_key_id: uuid.UUID | None = None,
    max_cost_usd: Decimal | None = None,
) -> uuid.UUID:
    """Insert a batch and all its jobs in one transaction: all rows or none.

    `also` writes more rows for the batch in the same transaction (the compat APIs' records)."""
    batch_id = uuid.uuid4()
    with engine.begin() as conn:
        if idempotency is not None:
            remember_idempotency(conn, tenant_id, idempotency, batch_id)
        conn.execute(
            text(
                "INSERT INTO batches (id, tenant_id, template, priority, chain, metadata, "
                "item_count, completion_window_s, expires_at, webhook_url, max_cost_usd) VALUES "
                "(:id, :tenant_id, :template, :priority, CAST(:chain AS jsonb), "
                "CAST(:meta AS jsonb), :n, CAST(:window AS integer), "
                "now() + make_interval(secs => CAST(:window AS integer)), :webhook_url, "
                ":max_cost)"
            ),
            {
                "id": batch_id,
                "tenant_id": tenant_id,
                "template": template,
                "priority": priority,
                "chain": json.dumps(chain),
                "meta": json.dumps(meta),
                "n": len(items),
                "window": completion_window_s,
                "webhook_url": webhook_url,
                "max_cost": max_cost_usd,
            },
        )
        shared = (str(tenant_id), str(batch_id), "queued", priority, template, chain,
                  str(api_key_id) if api_key_id else None)  # fmt: skip
        _copy_jobs(conn, shared, items, template_version)
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
    idempotency: Idempotency | None = None,
    api_key_id: uuid.UUID | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    scope = engine.begin() if idempotency is not None else _statement(engine)
    with scope as conn:
        if idempotency is not None:
            remember_idempotency(conn, tenant_id, idempotency, job_id)
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, custom_id, priority, template, "
                "template_version, input, params, chain, metadata, dispatched_at, guardrails, "
                "api_key_id) VALUES (:id, :tenant_id, :custom_id, :priority, :template, "
                ":version, :input, CAST(:params AS jsonb), CAST(:chain AS jsonb), "
                "CAST(:meta AS jsonb), now(), CAST(:guardrails AS jsonb), :api_key_id)"
            ),
            {
                "id": job_id,
                "tenant_id": tenant_id,
                "custom_id": item.custom_id,
                "priority": priority,
                "template": template,
                "version": item.template_version or template_version,
                "input": item.input,
                "params": json.dumps(item.params or {}),
                "chain": json.dumps(chain),
                "meta": json.dumps(item.meta or {}),
                "guardrails": json.dumps(item.guardrails or []),
                "api_key_id": api_key_id,
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
    # Seconds left in the batch's completion window (None: no window); no call starts after.
    expires_in_s: float | None = None
    parent_id: uuid.UUID | None = None  # a chunk or reduce job of a long document


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
    "parent_id"
)


def claim_job(
    engine: Engine, job_id: str, owner: str, lease_s: float, released: str | None = None
) -> ClaimedJob | None:
    """Take the job for `owner` if it is waiting, or running under an expired lease, or running
    under the lease of `released`: a delivery that lost Postgres after its claim and handed its
    lease over to the next delivery (pipeline.LeaseHandedOver) instead of letting it expire."""
    with _statement(engine) as conn:
        row = conn.execute(
            _CLAIM_SQL,
            {"id": job_id, "owner": owner, "lease": lease_s, "released": released},
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


_RECORD_ATTEMPT_SQL = text(
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
)


def record_attempt(
    engine: Engine, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
) -> RecordedAttempt | None:
    """Insert the attempt if we still hold the job (None if we lost it).

    The attempt number comes from the same conditional UPDATE that renews the lease, so two
    workers can never write the same attempt and a fenced-off worker writes none.
    """
    with _statement(engine) as conn:
        row = conn.execute(
            _RECORD_ATTEMPT_SQL,
            {"id": job_id, "owner": owner, "lease": lease_s, **attempt.__dict__},
        ).first()
    return None if row is None else RecordedAttempt(row[0], row[1])


def prior_attempts(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT attempt_no, provider, model, outcome, output FROM attempts "
                "WHERE job_id = :id "
                # Attempts before a batch retry belong to the earlier run.
                "AND attempt_no > (SELECT attempts_floor FROM jobs WHERE id = :id) "
                "ORDER BY attempt_no"
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
    with _statement(engine) as conn:
        result = conn.execute(
            _FINISH_SQL,
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
    with _statement(engine) as conn:
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
    with _statement(engine) as conn:
        rows = conn.execute(_WAKE_SQL, {"ids": list(job_ids)})
        return [(r[0], r[1]) for r in rows]


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
                "AND status IN ('queued', 'retrying', 'waiting') "
                "RETURNING id, EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id)"
            ),
            params,
        ).all()
        # A long document's chunk and reduce jobs belong to its parent, not to the batch.
        parents = [row[0] for row in cancelled if row[1]]
        children = {"ps": parents, "t": tenant_id}
        conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', error_code = 'cancelled', "
                "error_message = 'cancelled by the client', finished_at = now(), "
                f"not_before = NULL, cancel_requested_at = now(), {ROLLUP_SET} "
                "WHERE parent_id = ANY(:ps) AND tenant_id = :t "
                "AND status IN ('queued', 'retrying')"
            ),
            children,
        )
        conn.execute(
            text(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
                "WHERE parent_id = ANY(:ps) AND tenant_id = :t AND status = 'running'"
            ),
            children,
        )
        stopping = conn.execute(
            text(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
                f"WHERE {column} = :{scope} AND tenant_id = :t AND status = 'running'"
            ),
            params,
        ).rowcount
    for parent in parents:
        roll_up_parent(engine, parent)  # what its children spent stays on the document
    return Cancellation(cancelled=len(cancelled), stopping=stopping)


# ---------------------------------------------------------------------------------------------
# Reads for the API (always filtered by tenant)

JOB_COLUMNS = (
    "id, batch_id, custom_id, status, priority, template, template_version, result, provider, "
    "model, cache_hit, error_code, error_message, route, guardrails, input_tokens, "
    "output_tokens, cost_usd, attempts_made, created_at, started_at, finished_at, metadata, "
    "parent_id, chunk_level, chunk_index"
)


def get_job(engine: Engine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    f"SELECT {JOB_COLUMNS}, EXISTS (SELECT 1 FROM jobs c "
                    "WHERE c.parent_id = jobs.id) AS has_children "
                    "FROM jobs WHERE id = :id AND tenant_id = :t"
                ),
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
    # One snapshot for both reads: a cancel committing between them would otherwise show
    # every job cancelled under a batch that is not, and the batch would read "completed".
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        row = (
            conn.execute(
                text(
                    "SELECT id, template, priority, chain, metadata, item_count, created_at, "
                    "cancelled_at, max_cost_usd FROM batches WHERE id = :id AND tenant_id = :t"
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
    engine: Engine,
    batch_id: uuid.UUID,
    chunk: int = 1000,
    statuses: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream a batch's jobs in item order, a page at a time (keyset on seq): bounded memory.
    `statuses` keeps only jobs in those states (`?status=failed`)."""
    only = "AND status = ANY(:st) " if statuses else ""
    last_seq = -1
    while True:
        with engine.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    text(
                        "SELECT seq, id, custom_id, status, result, provider, model, cache_hit, "
                        "error_code, error_message, input_tokens, output_tokens, cost_usd, "
                        "finished_at, template, template_version, route "
                        f"FROM jobs WHERE batch_id = :b AND seq > :s {only}"
                        "ORDER BY seq LIMIT :n"
                    ),
                    {"b": batch_id, "s": last_seq, "n": chunk, "st": list(statuses or ())},
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


def extend_leases(conn: Connection, lease_s: float) -> int:
    """Every running job's lease lasts at least `lease_s` from now (after Postgres was
    unreachable, when no worker could renew): live workers renew again within a third of it,
    and a job whose worker died meanwhile comes back one lease later."""
    return conn.execute(
        text(
            "UPDATE jobs SET lease_expires_at = greatest(lease_expires_at, "
            "now() + make_interval(secs => :lease)) WHERE status = 'running'"
        ),
        {"lease": lease_s},
    ).rowcount


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


# ---------------------------------------------------------------------------------------------
# Batch API (issue 5): idempotent submission, completion windows, retries, webhooks


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key and what to answer a retry with (`response` gets the new "id")."""

    key: str
    endpoint: str
    request_hash: str
    status_code: int
    response: dict[str, Any]
    ttl_s: float = 86_400.0  # after this a key is free again (and the reconciler deletes it)


@dataclass(frozen=True)
class StoredResponse:
    endpoint: str
    request_hash: str
    status_code: int
    response: dict[str, Any]


class IdempotentReplay(Exception):
    """The key was used before by this tenant: the submission's transaction is rolled back."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(f"idempotency key already used for {stored.endpoint}")
        self.stored = stored


def remember_idempotency(
    conn: Connection, tenant_id: uuid.UUID, idem: Idempotency, resource_id: uuid.UUID
) -> None:
    """First statement of a submission's transaction. A concurrent submission with the same key
    waits on the primary key until this one commits, then finds its answer (race-safe)."""
    inserted = conn.execute(
        text(
            "INSERT INTO idempotency_keys (tenant_id, key, endpoint, request_hash, status_code, "
            "response) VALUES (:t, :k, :e, :h, :c, CAST(:r AS jsonb)) "
            # An expired key is taken over as if it were new.
            "ON CONFLICT (tenant_id, key) DO UPDATE SET endpoint = EXCLUDED.endpoint, "
            "request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code, "
            "response = EXCLUDED.response, created_at = now() "
            "WHERE idempotency_keys.created_at < now() - make_interval(secs => :ttl) "
            "RETURNING key"
        ),
        {
            "t": tenant_id,
            "k": idem.key,
            "e": idem.endpoint,
            "h": idem.request_hash,
            "c": idem.status_code,
            "r": json.dumps({**idem.response, "id": str(resource_id)}),
            "ttl": idem.ttl_s,
        },
    ).first()
    if inserted is not None:
        return
    row = conn.execute(
        text(
            "SELECT endpoint, request_hash, status_code, response FROM idempotency_keys "
            "WHERE tenant_id = :t AND key = :k"
        ),
        {"t": tenant_id, "k": idem.key},
    ).one()
    raise IdempotentReplay(StoredResponse(**row._asdict()))


def find_idempotent(
    engine: Engine, tenant_id: uuid.UUID, key: str, ttl_s: float
) -> StoredResponse | None:
    """Cheap early answer for a retry, before a big body is validated and copied again."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT endpoint, request_hash, status_code, response FROM idempotency_keys "
                "WHERE tenant_id = :t AND key = :k "
                "AND created_at >= now() - make_interval(secs => :ttl)"
            ),
            {"t": tenant_id, "k": key, "ttl": ttl_s},
        ).first()
    return StoredResponse(**row._asdict()) if row is not None else None


def delete_expired_idempotency_keys(conn: Connection, ttl_s: float, limit: int) -> int:
    """At most `limit` expired keys per call, so one reconciler tick stays short."""
    return conn.execute(
        text(
            "DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (SELECT tenant_id, key "
            "FROM idempotency_keys WHERE created_at < now() - make_interval(secs => :ttl) "
            "LIMIT :limit)"
        ),
        {"ttl": ttl_s, "limit": limit},
    ).rowcount


BATCH_EXTRA_COLUMNS = (
    "completion_window_s, expires_at, webhook_url, webhook_status, webhook_attempts, "
    "webhook_next_at"
)


def get_batch_extras(
    engine: Engine, tenant_id: uuid.UUID, batch_id: uuid.UUID
) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    f"SELECT {BATCH_EXTRA_COLUMNS} FROM batches WHERE id = :id AND tenant_id = :t"
                ),
                {"id": batch_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


ACTIVE_SQL = "('queued', 'running', 'retrying', 'waiting')"


def expire_overdue_jobs(conn: Connection) -> list[str]:
    """Waiting jobs of batches whose completion window closed end `expired`. Running ones stop
    at their next provider call (the pipeline checks the window). Returns the batch ids."""
    rows = conn.execute(
        text(
            "UPDATE jobs SET status = 'expired', error_code = 'expired', "
            "error_message = 'the batch completion window closed before the job finished', "
            "finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, "
            "dispatched_at = NULL, not_before = NULL "
            "FROM batches b WHERE jobs.batch_id = b.id AND b.expires_at <= now() "
            "AND jobs.status IN ('queued', 'retrying') RETURNING b.id::text"
        )
    )
    return sorted({r[0] for r in rows})


def retry_batch_items(
    engine: Engine, tenant_id: uuid.UUID, batch_id: uuid.UUID
) -> tuple[int, str] | None:
    """Put a batch's failed and expired jobs back to queued for a new run (fresh retry budget,
    new completion window, a new completion webhook). Returns (count, priority); None if the
    batch is not this tenant's."""
    with engine.begin() as conn:
        priority = conn.execute(
            text("SELECT priority FROM batches WHERE id = :id AND tenant_id = :t FOR UPDATE"),
            {"id": batch_id, "t": tenant_id},
        ).scalar_one_or_none()
        if priority is None:
            return None
        count = conn.execute(
            text(
                "UPDATE jobs SET status = 'queued', result = NULL, provider = NULL, "
                "model = NULL, cache_hit = false, error_code = NULL, error_message = NULL, "
                "route = '[]', guardrails = '[]', deliveries = 0, "
                "attempts_floor = attempts_made, not_before = NULL, dispatched_at = NULL, "
                "started_at = NULL, finished_at = NULL, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE batch_id = :id AND status IN ('failed', 'expired')"
            ),
            {"id": batch_id},
        ).rowcount
        if count:
            conn.execute(
                text(
                    "UPDATE batches SET expires_at = now() + make_interval(secs => "
                    "completion_window_s), webhook_status = NULL, webhook_event_id = NULL, "
                    "webhook_next_at = NULL WHERE id = :id"
                ),
                {"id": batch_id},
            )
    return count, priority


# Webhooks


def get_webhook_salt(engine: Engine, tenant_id: uuid.UUID) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT salt FROM webhook_secrets WHERE tenant_id = :t"), {"t": tenant_id}
        ).scalar_one_or_none()


def set_webhook_salt(engine: Engine, tenant_id: uuid.UUID, salt: str) -> None:
    """Create or rotate the tenant's secret (the old one stops verifying at once)."""
    with _statement(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_secrets (tenant_id, salt) VALUES (:t, :s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET salt = EXCLUDED.salt, created_at = now()"
            ),
            {"t": tenant_id, "s": salt},
        )


def mark_completed_batches_for_webhook(conn: Connection) -> int:
    """Batches with a webhook and no live job left get a completion event to deliver."""
    return conn.execute(
        text(
            "UPDATE batches SET webhook_status = 'pending', webhook_event_id = gen_random_uuid(), "
            "webhook_next_at = now() WHERE webhook_url IS NOT NULL AND webhook_status IS NULL "
            f"AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = batches.id "
            f"AND j.status IN {ACTIVE_SQL})"
        )
    ).rowcount


def take_due_webhooks(
    conn: Connection, lease_s: float, limit: int, max_attempts: int
) -> list[tuple[str, int, str]]:
    """(batch_id, attempt_no, priority) of deliveries due now. The lease keeps a delivery in
    flight from being published twice; if its message is lost it comes due again.

    An attempt is counted when it is claimed, so one that never recorded an outcome (its worker
    died) still counts: when the last allowed attempt's lease runs out, the webhook has failed.
    Without this bound such a webhook was published again every lease, forever (issue 14)."""
    conn.execute(
        text(
            "UPDATE batches SET webhook_status = 'failed' WHERE webhook_url IS NOT NULL "
            "AND webhook_status = 'pending' AND webhook_next_at <= now() "
            "AND webhook_attempts >= :max"
        ),
        {"max": max_attempts},
    )
    rows = conn.execute(
        text(
            "UPDATE batches SET webhook_next_at = now() + make_interval(secs => :lease) "
            "WHERE id IN (SELECT id FROM batches WHERE webhook_url IS NOT NULL "
            "AND webhook_status = 'pending' AND webhook_next_at <= now() "
            "AND webhook_attempts < :max "
            "ORDER BY webhook_next_at LIMIT :n FOR UPDATE SKIP LOCKED) "
            "RETURNING id::text, webhook_attempts + 1, priority"
        ),
        {"lease": lease_s, "n": limit, "max": max_attempts},
    )
    return [(r[0], r[1], r[2]) for r in rows]


@dataclass(frozen=True)
class WebhookClaim:
    tenant_id: uuid.UUID
    url: str
    event_id: uuid.UUID


def claim_webhook_attempt(
    engine: Engine, batch_id: str, attempt_no: int, lease_s: float
) -> WebhookClaim | None:
    """Take attempt `attempt_no`; a duplicate or stale message finds nothing to take."""
    with _statement(engine) as conn:
        row = conn.execute(
            text(
                "UPDATE batches SET webhook_attempts = :n, "
                "webhook_next_at = now() + make_interval(secs => :lease) "
                "WHERE id = :id AND webhook_status = 'pending' AND webhook_attempts = :n - 1 "
                "RETURNING tenant_id, webhook_url AS url, webhook_event_id AS event_id"
            ),
            {"id": batch_id, "n": attempt_no, "lease": lease_s},
        ).first()
    return WebhookClaim(**row._asdict()) if row is not None else None


def record_webhook_delivery(
    engine: Engine,
    batch_id: str,
    attempt_no: int,
    claim: WebhookClaim,
    *,
    outcome: str,
    http_status: int | None,
    error: str | None,
    latency_ms: float,
    retry_in_s: float | None,
) -> None:
    """Keep the attempt and move the batch on: delivered, failed for good, or due again."""
    status = "delivered" if outcome == "delivered" else "pending" if retry_in_s else "failed"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_deliveries (batch_id, attempt_no, event_id, url, outcome, "
                "http_status, error, latency_ms) VALUES (:b, :n, :e, :u, :o, :s, :err, :ms) "
                "ON CONFLICT (batch_id, attempt_no) DO NOTHING"
            ),
            {
                "b": batch_id,
                "n": attempt_no,
                "e": claim.event_id,
                "u": claim.url,
                "o": outcome,
                "s": http_status,
                "err": error,
                "ms": latency_ms,
            },
        )
        conn.execute(
            text(
                "UPDATE batches SET webhook_status = :status, "
                "webhook_next_at = now() + make_interval(secs => CAST(:delay AS float8)) "
                "WHERE id = :b AND webhook_attempts = :n AND webhook_status = 'pending'"
            ),
            {"b": batch_id, "n": attempt_no, "status": status, "delay": retry_in_s},
        )


def list_webhook_deliveries(engine: Engine, batch_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT attempt_no, event_id, url, outcome, http_status, error, latency_ms, "
                "created_at FROM webhook_deliveries WHERE batch_id = :b ORDER BY attempt_no"
            ),
            {"b": batch_id},
        ).mappings()
        return [dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# Map-reduce of long documents (llmq/mapreduce.py): a parent job waits while its chunk and
# reduce jobs run; all of them point at it through parent_id.


@dataclass(frozen=True)
class NewChild:
    template: str
    template_version: int
    input: str
    params: dict[str, Any]
    level: int
    index: int


def _insert_children(
    conn: Connection, parent_id: uuid.UUID, children: Sequence[NewChild]
) -> list[tuple[str, str]]:
    """Insert children as dispatched (the caller publishes, or undoes on failure)."""
    rows = [
        {
            "id": uuid.uuid4(),
            "parent": parent_id,
            "template": c.template,
            "version": c.template_version,
            "input": c.input,
            "params": json.dumps(c.params),
            "level": c.level,
            "idx": c.index,
        }
        for c in children
    ]
    conn.execute(
        text(
            "INSERT INTO jobs (id, tenant_id, priority, template, template_version, input, params, "
            "chain, parent_id, chunk_level, chunk_index, seq, dispatched_at) "
            "SELECT :id, p.tenant_id, p.priority, :template, :version, :input, "
            "CAST(:params AS jsonb), p.chain, p.id, :level, :idx, :idx, now() "
            "FROM jobs p WHERE p.id = :parent"
        ),
        rows,
    )
    priority = conn.execute(
        text("SELECT priority FROM jobs WHERE id = :id"), {"id": parent_id}
    ).scalar_one()
    return [(str(r["id"]), priority) for r in rows]


def start_children(
    engine: Engine,
    parent_id: uuid.UUID,
    owner: str,
    children: Sequence[NewChild],
    route: list[dict[str, Any]],
    guardrails: list[dict[str, Any]],
) -> list[tuple[str, str]] | None:
    """Park the parent as waiting and insert its chunk jobs, atomically; None if the parent
    is no longer ours (lease lost)."""
    with engine.begin() as conn:
        parked = conn.execute(
            text(
                "UPDATE jobs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, "
                "route = CAST(:route AS jsonb), guardrails = CAST(:guardrails AS jsonb) "
                "WHERE id = :id AND lease_owner = :owner AND status = 'running'"
            ),
            {
                "id": parent_id,
                "owner": owner,
                "route": json.dumps(route),
                "guardrails": json.dumps(guardrails),
            },
        ).rowcount
        if parked != 1:
            return None
        return _insert_children(conn, parent_id, children)


@dataclass(frozen=True)
class WaitingParent:
    id: uuid.UUID
    template: str
    template_version: int
    params: dict[str, Any]
    status: str
    chain: list[str]


def lock_parent(conn: Connection, parent_id: uuid.UUID) -> WaitingParent | None:
    """The parent row, locked for this transaction: one child at a time advances it."""
    row = conn.execute(
        text(
            "SELECT id, template, template_version, params, status, chain FROM jobs "
            "WHERE id = :id FOR UPDATE"
        ),
        {"id": parent_id},
    ).first()
    return WaitingParent(**row._asdict()) if row is not None else None


def current_level(conn: Connection, parent_id: uuid.UUID) -> list[dict[str, Any]]:
    """The children of the highest level so far, in order."""
    return [
        dict(r)
        for r in conn.execute(
            text(
                "SELECT id, chunk_level, chunk_index, status, result, provider, model, "
                "error_code, error_message FROM jobs WHERE parent_id = :p AND chunk_level = "
                "(SELECT max(chunk_level) FROM jobs WHERE parent_id = :p) ORDER BY chunk_index"
            ),
            {"p": parent_id},
        ).mappings()
    ]


def add_children(
    conn: Connection, parent_id: uuid.UUID, children: Sequence[NewChild]
) -> list[tuple[str, str]]:
    return _insert_children(conn, parent_id, children)


def finish_parent(conn: Connection, parent_id: uuid.UUID, outcome: Outcome) -> None:
    conn.execute(
        text(
            "UPDATE jobs SET status = :status, result = :result, provider = :provider, "
            "model = :model, error_code = :error_code, error_message = :error_message, "
            "finished_at = now() WHERE id = :id AND status = 'waiting'"
        ),
        {
            "id": parent_id,
            "status": outcome.status,
            "result": outcome.result,
            "provider": outcome.provider,
            "model": outcome.model,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
        },
    )


def cancel_open_children(conn: Connection, parent_id: uuid.UUID, reason: str) -> int:
    """Children not yet started are not worth running once the parent has ended."""
    return conn.execute(
        text(
            "UPDATE jobs SET status = 'cancelled', error_code = 'parent_ended', "
            "error_message = :reason, finished_at = now(), dispatched_at = NULL "
            "WHERE parent_id = :p AND status IN ('queued', 'retrying')"
        ),
        {"p": parent_id, "reason": reason},
    ).rowcount


def roll_up_parent(engine: Engine, parent_id: uuid.UUID) -> None:
    """The parent's tokens and cost: every attempt of every child (and its own), so far."""
    with _statement(engine) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET input_tokens = a.input_tokens, output_tokens = a.output_tokens, "
                "cost_usd = a.cost_usd FROM (SELECT coalesce(sum(input_tokens), 0) AS "
                "input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens, "
                "CASE WHEN bool_or(cost_usd IS NULL) THEN NULL "
                "ELSE coalesce(sum(cost_usd), 0) END AS cost_usd FROM attempts "
                "WHERE job_id = :p OR job_id IN (SELECT id FROM jobs WHERE parent_id = :p)) a "
                "WHERE jobs.id = :p"
            ),
            {"p": parent_id},
        )


def stalled_parents(engine: Engine, limit: int = 100) -> list[uuid.UUID]:
    """Waiting parents none of whose children is still live: a crash between a child's finish
    and the parent's advance left them; the reconciler advances them."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT p.id FROM jobs p WHERE p.status = 'waiting' AND NOT EXISTS "
                    "(SELECT 1 FROM jobs c WHERE c.parent_id = p.id "
                    "AND c.status IN ('queued', 'running', 'retrying')) LIMIT :n"
                ),
                {"n": limit},
            ).scalars()
        )


def child_counts(engine: Engine, parent_id: uuid.UUID) -> list[dict[str, Any]]:
    """(level, status, n) of a parent's children, for its progress."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT chunk_level AS level, status, count(*) AS n FROM jobs "
                    "WHERE parent_id = :p GROUP BY chunk_level, status"
                ),
                {"p": parent_id},
            ).mappings()
        ]


def usage_by_template(
    engine: Engine, tenant_id: uuid.UUID, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Jobs, outcomes, tokens and cost per template version (A/B comparisons). Chunk and reduce
    jobs are left out: their parent already carries their tokens and cost."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT template, template_version, count(*) AS jobs, "
                    "count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
                    "count(*) FILTER (WHERE status IN ('failed', 'blocked')) AS failed, "
                    "coalesce(sum(input_tokens), 0) AS input_tokens, "
                    "coalesce(sum(output_tokens), 0) AS output_tokens, "
                    "coalesce(sum(cost_usd), 0) AS cost_usd FROM jobs "
                    "WHERE tenant_id = :t AND parent_id IS NULL "
                    "AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since) "
                    "GROUP BY template, template_version ORDER BY template, template_version"
                ),
                {"t": tenant_id, "since": since},
            ).mappings()
        ]


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
    with _statement(engine) as conn:
        row = conn.execute(
            text(
                "UPDATE jobs SET status = 'queued', result = NULL, provider = NULL, "
                "model = NULL, cache_hit = false, error_code = NULL, error_message = NULL, "
                "route = '[]', guardrails = '[]', deliveries = 0, started_at = NULL, "
                "attempts_floor = attempts_made, finished_at = NULL, not_before = NULL, "
                "cancel_requested_at = NULL, lease_owner = NULL, lease_expires_at = NULL, "
                "dispatched_at = now() "
                "WHERE id = :id AND status IN ('failed', 'expired', 'blocked', 'cancelled') "
                "RETURNING id::text, priority"
            ),
            {"id": job_id},
        ).first()
    return None if row is None else (row[0], row[1])


# ---------------------------------------------------------------------------------------------
# API keys over HTTP (api/routes/admin.py)


def get_api_key_by_hash(engine: Engine, key_hash: str) -> dict[str, Any] | None:
    """The listing row of one key (never the key itself), found by its hash."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(_KEY_ROWS + "WHERE k.key_hash = :h"),
                {"h": key_hash},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None

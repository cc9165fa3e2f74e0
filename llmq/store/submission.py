"""Writing new work: batches and single jobs (COPY for large batches), and the fan-out's
claim of batch chunks to publish.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.store import crypto
from llmq.store.base import autocommit
from llmq.store.idempotency import Idempotency, remember_idempotency


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
    "tenant_id", "batch_id", "status", "priority", "template", "chain", "api_key_id", "lane",
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
    encoded: dict[tuple[int, bool], tuple[object, str]] = {}

    def cached(value: dict[str, Any] | None, sealed: bool = False) -> str:
        if not value:
            return "{}"
        hit = encoded.get((id(value), sealed))
        if hit is None:
            hit = encoded[id(value), sealed] = (value, _copy_text(seal(value) if sealed else value))
        return hit[1]

    random = os.urandom
    seal = crypto.seal_params
    encrypt = crypto.encrypt
    lines = [
        "\t".join(
            (
                str(uuid.UUID(bytes=random(16), version=4)),
                str(seq),
                _copy_text(item.custom_id),
                _copy_text(encrypt(item.input)),
                cached(item.params, sealed=True),
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
    shadow: dict[str, Any] | None = None,
    lane: str = "sync",
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
                "item_count, completion_window_s, expires_at, webhook_url, max_cost_usd, "
                "shadow, lane) VALUES "
                "(:id, :tenant_id, :template, :priority, CAST(:chain AS jsonb), "
                "CAST(:meta AS jsonb), :n, CAST(:window AS integer), "
                "now() + make_interval(secs => CAST(:window AS integer)), :webhook_url, "
                ":max_cost, CAST(:shadow AS jsonb), :lane)"
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
                "shadow": None if shadow is None else json.dumps(shadow),
                "lane": lane,
            },
        )
        shared = (str(tenant_id), str(batch_id), "queued", priority, template, chain,
                  str(api_key_id) if api_key_id else None, lane)  # fmt: skip
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
    scope = engine.begin() if idempotency is not None else autocommit(engine)
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
                "input": crypto.encrypt(item.input),
                "params": json.dumps(crypto.seal_params(item.params)),
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
    with autocommit(engine) as conn:
        rows = conn.execute(
            text(
                # MATERIALIZED: see reconcile.take_due_for_dispatch.
                "WITH due AS MATERIALIZED (SELECT id FROM jobs "
                "WHERE batch_id = :b AND status = 'queued' AND dispatched_at IS NULL "
                "AND lane = 'sync' "
                "ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED) "
                "UPDATE jobs SET dispatched_at = now() FROM due WHERE jobs.id = due.id "
                "RETURNING jobs.id::text, jobs.priority, jobs.seq"
            ),
            {"b": str(batch_id), "n": limit},
        ).all()
    return [(row[0], row[1]) for row in sorted(rows, key=lambda r: r[2])]


def undo_dispatch(engine: Engine, job_ids: Sequence[str]) -> None:
    """Publishing failed: leave these jobs for the reconciler."""
    with autocommit(engine) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET dispatched_at = NULL WHERE id = ANY(CAST(:ids AS uuid[])) "
                "AND status IN ('queued', 'retrying')"
            ),
            {"ids": list(job_ids)},
        )

"""Reads for the API, always filtered by tenant: jobs, batches and their results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from llmq.store import crypto
from llmq.store.models import TERMINAL_STATUSES, JobStatus

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
                    "WHERE c.parent_id = jobs.id) AS has_children, lane, "
                    # The provider Batch lane's upload that carried the job, if any.
                    "(SELECT p.upstream_id FROM provider_batches p "
                    "WHERE p.id = jobs.provider_batch_id) AS upstream_batch_id, "
                    "(SELECT coalesce(p.upstream_status, p.state) FROM provider_batches p "
                    "WHERE p.id = jobs.provider_batch_id) AS upstream_status "
                    # A shadow run is never shown to the client (llmq/execution/shadow.py).
                    "FROM jobs WHERE id = :id AND tenant_id = :t AND kind = 'primary'"
                ),
                {"id": job_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        job = dict(row)
        job["result"] = crypto.decrypt_opt(job["result"])
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
                    "cancelled_at, max_cost_usd, lane "
                    "FROM batches WHERE id = :id AND tenant_id = :t"
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
                {**r, "result": crypto.decrypt_opt(r["result"])}
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

"""Completion webhooks: per-tenant secrets, due deliveries and their attempts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.store.audit import AuditEvent, append_event
from llmq.store.base import ACTIVE_SQL, autocommit

# Webhooks


def get_webhook_salt(engine: Engine, tenant_id: uuid.UUID) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT salt FROM webhook_secrets WHERE tenant_id = :t"), {"t": tenant_id}
        ).scalar_one_or_none()


def set_webhook_salt(
    engine: Engine, tenant_id: uuid.UUID, salt: str, *, actor: str = "system"
) -> None:
    """Create or rotate the tenant's secret (the old one stops verifying at once). The audit
    row (`webhook_secret.created` or `.rotated`, never the secret) commits with it."""
    with engine.begin() as conn:
        rotated = conn.execute(
            text(
                "INSERT INTO webhook_secrets (tenant_id, salt) VALUES (:t, :s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET salt = EXCLUDED.salt, created_at = now() "
                "RETURNING (xmax <> 0) AS rotated"
            ),
            {"t": tenant_id, "s": salt},
        ).scalar_one()
        action = "webhook_secret.rotated" if rotated else "webhook_secret.created"
        append_event(conn, AuditEvent(actor, action, tenant_id, str(tenant_id)))


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
            # MATERIALIZED: see reconcile.take_due_for_dispatch.
            "WITH due AS MATERIALIZED (SELECT id FROM batches WHERE webhook_url IS NOT NULL "
            "AND webhook_status = 'pending' AND webhook_next_at <= now() "
            "AND webhook_attempts < :max "
            "ORDER BY webhook_next_at LIMIT :n FOR UPDATE SKIP LOCKED) "
            "UPDATE batches SET webhook_next_at = now() + make_interval(secs => :lease) "
            "FROM due WHERE batches.id = due.id "
            "RETURNING batches.id::text, batches.webhook_attempts + 1, batches.priority"
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
    with autocommit(engine) as conn:
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

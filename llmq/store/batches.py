"""Batch-level writes: retrying a batch's failed and expired items."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, text


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
                # A provider Batch lane job waits for a new upload (the reconciler leaves it).
                "lease_expires_at = NULL, provider_batch_id = NULL "
                "WHERE batch_id = :id AND status IN ('failed', 'expired')"
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

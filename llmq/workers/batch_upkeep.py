"""The reconciler's batch chores: close completion windows (jobs end `expired`), notice
completed batches that carry a webhook, publish the webhook attempts that are due, and forget
expired idempotency keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from sqlalchemy import Connection

from llmq import store
from llmq.settings import PRIORITY_TO_QUEUE, Settings
from llmq.telemetry.events import EventPublisher

from .celery_app import app
from .dispatch import RETRY_POLICY

DELIVER_WEBHOOK = "llmq.deliver_webhook"
WEBHOOK_LIMIT = 500
KEYS_LIMIT = 5000  # expired idempotency keys deleted per tick


@dataclass
class Upkeep:
    expired_batches: list[str] = field(default_factory=list)
    webhooks_due: list[tuple[str, int, str]] = field(default_factory=list)


def collect(conn: Connection, settings: Settings) -> Upkeep:
    """Inside the reconciler's transaction (one reconciler at a time)."""
    expired = store.expire_overdue_jobs(conn)
    store.mark_completed_batches_for_webhook(conn)
    due = store.take_due_webhooks(
        conn, settings.webhook_timeout_s + 30, WEBHOOK_LIMIT, settings.webhook_max_attempts
    )
    store.delete_expired_idempotency_keys(conn, settings.idempotency_ttl_s, KEYS_LIMIT)
    return Upkeep(expired, due)


def publish_webhooks(due: Sequence[tuple[str, int, str]]) -> None:
    """A lost message is harmless: its attempt comes due again after the lease."""
    for batch_id, attempt_no, priority in due:
        app.send_task(
            DELIVER_WEBHOOK,
            args=[batch_id, attempt_no],
            queue=PRIORITY_TO_QUEUE[priority],
            retry_policy=RETRY_POLICY,
        )


def publish(upkeep: Upkeep, client: redis.Redis) -> None:
    """After COMMIT: wake the event streams of batches that had jobs expire; send webhooks."""
    if upkeep.expired_batches:
        EventPublisher(client).batches_changed(upkeep.expired_batches)
    publish_webhooks(upkeep.webhooks_due)

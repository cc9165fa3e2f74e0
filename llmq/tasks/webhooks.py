"""Webhook delivery task. Thin: one attempt per message (llmq.webhooks.delivery.deliver_attempt);
the next attempt is stored as `webhook_next_at` and published by the reconciler when due, so no
countdown ever sits in a worker's memory."""

from __future__ import annotations

from llmq.settings import get_settings
from llmq.store.engine import get_engine
from llmq.webhooks.delivery import deliver_attempt
from llmq.workers.batch_upkeep import DELIVER_WEBHOOK
from llmq.workers.celery_app import app


@app.task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(batch_id: str, attempt_no: int) -> str:
    settings = get_settings()
    assert settings.database_url
    return deliver_attempt(get_engine(settings.database_url), settings, batch_id, attempt_no)

"""Cancelling from any API surface (native, OpenAI- and Anthropic-compatible): end the waiting
jobs, flag the running ones, and wake the event streams now rather than at their next snapshot."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from llmq import store
from llmq.store.models import JobStatus
from llmq.telemetry.events import EventPublisher


def cancel_batch(
    engine: Engine, events: EventPublisher, tenant_id: uuid.UUID, batch_id: uuid.UUID
) -> None:
    done = store.cancel_jobs(engine, tenant_id, batch_id=batch_id)
    if done is not None:
        events.batches_changed([str(batch_id)])


def cancel_job(
    engine: Engine,
    events: EventPublisher,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    batch_id: uuid.UUID | None,
) -> None:
    done = store.cancel_jobs(engine, tenant_id, job_id=job_id)
    if done is not None and done.cancelled:  # a running job's worker announces its own end
        events.job_changed(job_id, batch_id, JobStatus.CANCELLED)

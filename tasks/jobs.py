"""Task bodies. Thin: the work is in llmq.pipeline; these only adapt Celery to it."""

from __future__ import annotations

import logging
import random
from typing import Any

from llmq import repository
from llmq.db.engine import get_engine
from llmq.pipeline import LeaseHandedOver
from llmq.retry import RetryPolicy
from llmq.settings import get_settings
from workers import signals as _signals  # noqa: F401  (connects the worker lifecycle hooks)
from workers.celery_app import app
from workers.dispatch import DISPATCH_BATCH, RUN_JOB, publish_jobs
from workers.runtime import get_pipeline
from workers.telemetry import consuming

log = logging.getLogger(__name__)

DISPATCH_CHUNK = 1000
_rng = random.Random()


@app.task(
    name=RUN_JOB,
    bind=True,
    ignore_result=True,
    # Postgres unreachable before the claim: publish the message again after a short, growing,
    # jittered wait instead of acking it away.
    autoretry_for=repository.UNAVAILABLE,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def run_job(self: Any, job_id: str, resume: str | None = None) -> str:
    with consuming(self.request, "run_job"):
        try:
            return get_pipeline().run(job_id, resume=resume)
        except LeaseHandedOver as exc:
            resume = exc.owner
        except repository.UNAVAILABLE:
            if resume is None:
                raise  # nothing claimed: the autoretry above
        # Postgres went away after the claim: the next message takes the lease over (and the
        # paid calls parked with it) once Postgres answers, within a third of a lease, before
        # the lease could expire and the job wait for the reconciler.
        policy = RetryPolicy(base_s=0.5, cap_s=max(1.0, get_settings().job_lease_s / 3))
        raise self.retry(
            kwargs={"job_id": job_id, "resume": resume},
            countdown=policy.delay(self.request.retries, _rng),
            max_retries=None,
        )


@app.task(name=DISPATCH_BATCH, ignore_result=True)
def dispatch_batch(batch_id: str) -> int:
    """Fan a batch out into one message per job, off the API's request path."""
    with consuming(dispatch_batch.request, "dispatch_batch"):
        return _dispatch_batch(batch_id)


def _dispatch_batch(batch_id: str) -> int:
    settings = get_settings()
    assert settings.database_url
    engine = get_engine(settings.database_url)
    published = 0
    while chunk := repository.take_batch_chunk_for_dispatch(engine, batch_id, DISPATCH_CHUNK):
        try:
            publish_jobs(chunk)
        except Exception:
            repository.undo_dispatch(engine, [job_id for job_id, _ in chunk])
            raise
        published += len(chunk)
    return published

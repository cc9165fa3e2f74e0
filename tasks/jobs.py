"""Task bodies. Thin: the work is in llmq.pipeline; these only adapt Celery to it."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError

from llmq import repository
from llmq.db.engine import get_engine
from llmq.settings import get_settings
from workers import signals as _signals  # noqa: F401  (connects the worker lifecycle hooks)
from workers.celery_app import app
from workers.dispatch import DISPATCH_BATCH, RUN_JOB, publish_jobs
from workers.runtime import get_pipeline
from workers.telemetry import consuming

log = logging.getLogger(__name__)

DISPATCH_CHUNK = 1000


@app.task(
    name=RUN_JOB,
    ignore_result=True,
    # Postgres unreachable before the claim: publish the message again after a short, growing,
    # jittered wait instead of acking it away. (After a claim, the lease covers the job.)
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def run_job(job_id: str) -> str:
    with consuming(run_job.request, "run_job"):
        return get_pipeline().run(job_id)


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

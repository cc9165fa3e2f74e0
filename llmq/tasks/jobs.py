"""Task bodies. Thin: the work is in llmq.execution.pipeline; these only adapt Celery to it."""

from __future__ import annotations

import logging
import random
from typing import Any

from llmq import store
from llmq.errors import LlmqError
from llmq.execution.pipeline import LeaseHandedOver
from llmq.resilience.retry import RetryPolicy
from llmq.settings import get_settings
from llmq.store.engine import get_engine
from llmq.store.models import JobStatus
from llmq.workers import signals as _signals  # noqa: F401  (connects the worker lifecycle hooks)
from llmq.workers.celery_app import app
from llmq.workers.dispatch import DISPATCH_BATCH, RUN_JOB, publish_jobs
from llmq.workers.runtime import get_pipeline
from llmq.workers.telemetry import consuming

log = logging.getLogger(__name__)

DISPATCH_CHUNK = 1000
_rng = random.Random()
# A job that ends in one of these ends its task in Celery's FAILURE state (Flower's "Failed").
FAILURE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.EXPIRED})


class JobFailed(LlmqError):
    """Raised by run_job once the job's row is final as failed, blocked or expired, so the task
    ends FAILURE (task-failed event) with the job's error code. The message is still acked
    (acks_late acks on an exception: task_acks_on_failure_or_timeout) and never retried (only
    OperationalError is): the job is over, this only reports it."""

    def __init__(self, job_id: str, status: str, error_code: str | None) -> None:
        # One message, so the repr that Flower shows reads as a sentence.
        super().__init__(f"{error_code or status}: job {job_id} ended {status}")
        self.job_id, self.status, self.error_code = job_id, status, error_code

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str, str, str | None]]:
        # Pickled across pool processes (prefork) with the arguments __init__ takes.
        return (JobFailed, (self.job_id, self.status, self.error_code))


@app.task(
    name=RUN_JOB,
    bind=True,
    ignore_result=True,
    # Postgres unreachable before the claim: publish the message again after a short, growing,
    # jittered wait instead of acking it away.
    autoretry_for=store.UNAVAILABLE,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
    # Expected: logged without a traceback, still a FAILURE for Celery's events and Flower.
    throws=(JobFailed,),
)
def run_job(self: Any, job_id: str, resume: str | None = None) -> str:
    with consuming(self.request, "run_job"):
        pipeline = get_pipeline()
        try:
            status = pipeline.run(job_id, resume=resume)
        except LeaseHandedOver as exc:
            resume = exc.owner
        except store.UNAVAILABLE:
            if resume is None:
                raise  # nothing claimed: the autoretry above
        else:
            if status in FAILURE_STATUSES:
                # The row, not this delivery's view: a delivery fenced out by another reports
                # what the job really became.
                ending = pipeline.jobs.job_ending(job_id)
                if ending is not None and ending[0] in FAILURE_STATUSES:
                    raise JobFailed(job_id, *ending)
            return status
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
    while chunk := store.take_batch_chunk_for_dispatch(engine, batch_id, DISPATCH_CHUNK):
        try:
            publish_jobs(chunk)
        except Exception:
            store.undo_dispatch(engine, [job_id for job_id, _ in chunk])
            raise
        published += len(chunk)
    return published

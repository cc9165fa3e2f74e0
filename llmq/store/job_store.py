"""`PostgresJobStore`: the execution pipeline's `JobStore` (llmq/execution/job_store.py) on
Postgres. An adapter only: the SQL stays in llmq/store/jobs.py."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine

from llmq.store import jobs
from llmq.store.jobs import AttemptRecord, ClaimedJob, Outcome, RecordedAttempt


class PostgresJobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim_job(
        self, job_id: str, owner: str, lease_s: float, released: str | None = None
    ) -> ClaimedJob | None:
        return jobs.claim_job(self.engine, job_id, owner, lease_s, released)

    def record_attempt(
        self, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
    ) -> RecordedAttempt | None:
        return jobs.record_attempt(self.engine, job_id, owner, lease_s, attempt)

    def prior_attempts(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return jobs.prior_attempts(self.engine, job_id)

    def finish_job(self, job_id: uuid.UUID, owner: str, outcome: Outcome) -> bool:
        return jobs.finish_job(self.engine, job_id, owner, outcome)

    def defer_job(
        self,
        job_id: uuid.UUID,
        owner: str,
        delay_s: float,
        route: list[dict[str, Any]],
        status: str,
    ) -> bool:
        return jobs.defer_job(self.engine, job_id, owner, delay_s, route, status)

    def job_ending(self, job_id: str) -> tuple[str, str | None] | None:
        return jobs.job_ending(self.engine, job_id)

    def renew_leases(self, owner_by_job: dict[str, str], lease_s: float) -> None:
        jobs.renew_leases(self.engine, owner_by_job, lease_s)

"""`InMemoryJobStore`: the execution pipeline's `JobStore` in process memory, for unit tests.

It keeps the semantics of the Postgres store (llmq/store/jobs.py) that the pipeline relies on,
under one lock: a claim only takes a queued or retrying job (or a running one whose lease expired
or was handed over); every write is fenced by the lease owner (a non-owner's write changes
nothing and returns False/None); attempt numbers are unique per job; a finish happens once and
rolls the attempts up into the job's totals; a deferral gives the job back without counting a
lost delivery. Time is the injected `clock` (seconds), so a test can let a lease expire.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from llmq.store.jobs import AttemptRecord, ClaimedJob, Outcome, RecordedAttempt
from llmq.store.models import TERMINAL_STATUSES, JobStatus


@dataclass
class StoredJob:
    """A job row as the in-memory store holds it (tests read a copy through `job`)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    template: str
    template_version: int
    input: str
    params: dict[str, Any]
    chain: list[str]
    batch_id: uuid.UUID | None = None
    expires_at: float | None = None  # on `clock`: when the batch's completion window closes
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = JobStatus.QUEUED
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    deliveries: int = 0
    attempts_made: int = 0
    attempts_floor: int = 0
    started_at: float | None = None
    not_before: float | None = None
    cancel_requested: bool = False
    result: str | None = None
    provider: str | None = None
    model: str | None = None
    cache_hit: bool = False
    error_code: str | None = None
    error_message: str | None = None
    route: list[dict[str, Any]] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None


class InMemoryJobStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[uuid.UUID, StoredJob] = {}
        # (job id, attempt number) -> the attempt: the key is the unique constraint.
        self._attempts: dict[tuple[uuid.UUID, int], AttemptRecord] = {}

    # -- setting up and reading back (tests) ----------------------------------------------------

    def add_job(
        self,
        chain: list[str],
        input: str,
        *,
        template: str = "summarize",
        template_version: int = 1,
        params: dict[str, Any] | None = None,
        tenant_id: uuid.UUID | None = None,
        batch_id: uuid.UUID | None = None,
        window_s: float | None = None,
    ) -> str:
        """A queued job; `window_s`: seconds left in its batch's completion window."""
        job = StoredJob(
            id=uuid.uuid4(),
            tenant_id=tenant_id or uuid.uuid4(),
            template=template,
            template_version=template_version,
            input=input,
            params=dict(params or {}),
            chain=list(chain),
            batch_id=batch_id,
            expires_at=None if window_s is None else self._clock() + window_s,
        )
        with self._lock:
            self._jobs[job.id] = job
        return str(job.id)

    def job(self, job_id: str | uuid.UUID) -> StoredJob:
        with self._lock:
            return dataclasses.replace(self._jobs[_uuid(job_id)])

    def attempts(self, job_id: str | uuid.UUID) -> list[tuple[int, AttemptRecord]]:
        """(attempt number, attempt) of every attempt of the job, in order."""
        key = _uuid(job_id)
        with self._lock:
            return sorted((no, a) for (jid, no), a in self._attempts.items() if jid == key)

    def request_cancel(self, job_id: str | uuid.UUID) -> None:
        """What the API's cancel does to a running job: the worker stops at its next step."""
        with self._lock:
            self._jobs[_uuid(job_id)].cancel_requested = True

    # -- the JobStore protocol (llmq/execution/job_store.py) ------------------------------------

    def claim_job(
        self, job_id: str, owner: str, lease_s: float, released: str | None = None
    ) -> ClaimedJob | None:
        now = self._clock()
        with self._lock:
            job = self._jobs.get(_uuid(job_id))
            if job is None:
                return None
            handed_over = released is not None and job.lease_owner == released
            expired = job.lease_expires_at is not None and job.lease_expires_at < now
            waiting = job.status in (JobStatus.QUEUED, JobStatus.RETRYING)
            if not (waiting or (job.status == JobStatus.RUNNING and (expired or handed_over))):
                return None
            if not handed_over:
                job.deliveries += 1
            job.status = JobStatus.RUNNING
            job.lease_owner = owner
            job.lease_expires_at = now + lease_s
            job.started_at = now if job.started_at is None else job.started_at
            job.not_before = None
            return ClaimedJob(
                id=job.id,
                tenant_id=job.tenant_id,
                batch_id=job.batch_id,
                template=job.template,
                template_version=job.template_version,
                input=job.input,
                params=dict(job.params),
                chain=list(job.chain),
                attempts_made=job.attempts_made,
                deliveries=job.deliveries,
                created_at=job.created_at,
                cancel_requested=job.cancel_requested,
                age_s=now - job.started_at,
                expires_in_s=None if job.expires_at is None else job.expires_at - now,
            )

    def record_attempt(
        self, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
    ) -> RecordedAttempt | None:
        with self._lock:
            job = self._held(job_id, owner)
            if job is None:
                return None
            number = job.attempts_made + 1
            if (job.id, number) in self._attempts:  # Postgres' unique (job_id, attempt_no)
                raise RuntimeError(f"attempt {number} of job {job.id} exists already")
            job.attempts_made = number
            job.lease_expires_at = self._clock() + lease_s
            self._attempts[(job.id, number)] = attempt
            return RecordedAttempt(number, job.cancel_requested)

    def prior_attempts(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        with self._lock:
            floor = self._jobs[job_id].attempts_floor
            rows = sorted(
                (no, a) for (jid, no), a in self._attempts.items() if jid == job_id and no > floor
            )
        return [
            {"attempt_no": no, "provider": a.provider, "model": a.model,
             "outcome": a.outcome, "output": a.output}
            for no, a in rows
        ]  # fmt: skip

    def finish_job(self, job_id: uuid.UUID, owner: str, outcome: Outcome) -> bool:
        assert outcome.status in TERMINAL_STATUSES
        with self._lock:
            job = self._held(job_id, owner)
            if job is None:
                return False
            attempts = [a for (jid, _), a in self._attempts.items() if jid == job_id]
            job.status = outcome.status
            job.result, job.provider, job.model = outcome.result, outcome.provider, outcome.model
            job.cache_hit = outcome.cache_hit
            job.error_code, job.error_message = outcome.error_code, outcome.error_message
            job.route = list(outcome.route or [])
            job.guardrails = [*job.guardrails, *(outcome.guardrails or [])]
            job.input_tokens = sum(a.input_tokens for a in attempts)
            job.output_tokens = sum(a.output_tokens for a in attempts)
            # As in Postgres: one unpriced attempt makes the total unknown, never silently low.
            known = [a.cost_usd for a in attempts if a.cost_usd is not None]
            job.cost_usd = sum(known, Decimal(0)) if len(known) == len(attempts) else None
            job.lease_owner = job.lease_expires_at = None
            return True

    def defer_job(
        self,
        job_id: uuid.UUID,
        owner: str,
        delay_s: float,
        route: list[dict[str, Any]],
        status: str = JobStatus.RETRYING,
    ) -> bool:
        assert status in (JobStatus.RETRYING, JobStatus.QUEUED)
        with self._lock:
            job = self._held(job_id, owner)
            if job is None:
                return False
            job.status = status
            job.deliveries -= 1  # a planned hand-back is not a lost delivery
            job.not_before = self._clock() + delay_s
            job.lease_owner = job.lease_expires_at = None
            job.route = list(route)
            return True

    def job_ending(self, job_id: str) -> tuple[str, str | None] | None:
        with self._lock:
            job = self._jobs.get(_uuid(job_id))
            return None if job is None else (job.status, job.error_code)

    def renew_leases(self, owner_by_job: dict[str, str], lease_s: float) -> None:
        with self._lock:
            for job_id, owner in owner_by_job.items():
                job = self._held(_uuid(job_id), owner)
                if job is not None:
                    job.lease_expires_at = self._clock() + lease_s

    def _held(self, job_id: uuid.UUID, owner: str) -> StoredJob | None:
        """The job if `owner` holds it (running under its lease); the caller holds the lock."""
        job = self._jobs.get(job_id)
        if job is None or job.status != JobStatus.RUNNING or job.lease_owner != owner:
            return None
        return job


def _uuid(job_id: str | uuid.UUID) -> uuid.UUID:
    return job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id)

"""What the execution pipeline needs from the record of truth: the `JobStore` protocol.

The pipeline depends on this, not on an Engine: `llmq.store.job_store.PostgresJobStore` is the
product's implementation, `llmq.testing.memory_store.InMemoryJobStore` the in-process one that
lets the fallback chain's decisions be unit tests.

Every state change is fenced by the lease owner: a call by a delivery that no longer holds the
job (its lease expired and another delivery claimed it) changes nothing and says so (False or
None). An implementation backed by a server raises one of `llmq.store.UNAVAILABLE` when it
cannot be reached; the pipeline retries its writes through that (and hands the lease over when
it lasts).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from llmq.store import AttemptRecord, ClaimedJob, Outcome, RecordedAttempt


class JobStore(Protocol):
    def claim_job(
        self, job_id: str, owner: str, lease_s: float, released: str | None = None
    ) -> ClaimedJob | None:
        """Take the job for `owner` under a lease of `lease_s` if it is queued or retrying, or
        running under an expired lease, or running under the lease of `released` (a delivery
        that handed its lease over: taking over from it is not a lost delivery). None when the
        job is finished, cancelled or held under a live lease."""
        ...

    def record_attempt(
        self, job_id: uuid.UUID, owner: str, lease_s: float, attempt: AttemptRecord
    ) -> RecordedAttempt | None:
        """Add the provider call as the job's next attempt (numbers are unique per job) and
        renew the lease; None when `owner` no longer holds the job."""
        ...

    def prior_attempts(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        """The attempts of the job's current run, in order: attempt_no, provider, model,
        outcome and output (the answer, kept only for a complete one)."""
        ...

    def finish_job(self, job_id: uuid.UUID, owner: str, outcome: Outcome) -> bool:
        """Write the terminal state and the totals of the attempts, once; False when `owner`
        no longer holds the job."""
        ...

    def defer_job(
        self,
        job_id: uuid.UUID,
        owner: str,
        delay_s: float,
        route: list[dict[str, Any]],
        status: str,
    ) -> bool:
        """Give the job back to wait `delay_s`, shown as `status` (retrying, or queued behind an
        identical job); not a lost delivery. False when `owner` no longer holds the job."""
        ...

    def job_ending(self, job_id: str) -> tuple[str, str | None] | None:
        """(status, error_code) as the record says now (None for an unknown job)."""
        ...

    def renew_leases(self, owner_by_job: dict[str, str], lease_s: float) -> None:
        """Extend the leases of the running jobs still held by the given owners."""
        ...

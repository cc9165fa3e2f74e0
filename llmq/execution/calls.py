"""One provider call, paid for and recorded: the call, the breaker's and the budget's view of
it, and its attempt row, written through a short Postgres refusal and parked in Redis when the
refusal lasts (llmq/execution/paid.py). Every call the pipeline makes goes through here, so
provider calls == attempt rows and each call's cost is counted once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from llmq import store
from llmq.cost.budgets import BudgetGuard, Hold
from llmq.cost.pricing import PriceTable
from llmq.errors import LlmqError
from llmq.execution.job_store import JobStore
from llmq.execution.paid import PaidCalls
from llmq.providers.base import Completion, CompletionRequest, Provider, ProviderError
from llmq.resilience.circuit import CircuitBreaker
from llmq.resilience.retry import RetryPolicy, retry_call
from llmq.telemetry import hooks

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Waits between tries of a write that records paid work or ends a job (LLMQ_DB_RETRY_S bounds
# the total): short first, since most refusals (too many clients) clear in a moment.
DB_WRITE_RETRY = RetryPolicy(base_s=0.2, cap_s=4.0)


class JobCancelled(LlmqError):
    """The client cancelled the job while it ran; raised at the next step."""


class ProviderCalls:
    """The pipeline's provider calls and its writes to the record of truth."""

    def __init__(
        self,
        jobs: JobStore,
        prices: PriceTable,
        *,
        lease_s: float,
        db_retry_s: float,
        worker_name: str | None,
        breaker: CircuitBreaker | None,
        budgets: BudgetGuard | None,
        paid: PaidCalls | None,
        sleep: Callable[[float], object],
        rng: random.Random,
    ) -> None:
        self.jobs = jobs
        self.prices = prices
        self._lease_s = lease_s
        self._db_retry_s = db_retry_s
        self.worker_name = worker_name
        self.breaker = breaker
        self.budgets = budgets
        self.paid = paid
        self._sleep = sleep
        self._rng = rng

    def write(self, write: Callable[[], _T]) -> _T:
        """A write that records paid work or moves a claimed job on, tried again through a
        short Postgres refusal (bounded by LLMQ_DB_RETRY_S, jittered waits) while the lease
        keeper holds the lease: a refusal costs a moment, not a lease or a paid answer."""
        return retry_call(
            write,
            retry_on=store.UNAVAILABLE,
            budget_s=self._db_retry_s,
            policy=DB_WRITE_RETRY,
            sleep=self._sleep,
            rng=self._rng,
        )

    def record_parked(self, job: store.ClaimedJob, owner: str) -> store.ClaimedJob:
        """Write the attempts an earlier delivery paid for but could not record (paid.py), so
        that the pipeline's recovery finishes from them; the job as it now stands."""
        if self.paid is None:
            return job
        try:
            parked = self.paid.parked(job.id)
        except redis.RedisError as exc:
            log.warning("could not read parked calls of job %s: %s", job.id, type(exc).__name__)
            return job
        recorded = 0
        for field_, record in parked:
            written = self.write(
                functools.partial(self.jobs.record_attempt, job.id, owner, self._lease_s, record)
            )
            if written is None:  # lost the lease: the new owner records them
                break
            recorded += 1
            with contextlib.suppress(redis.RedisError):  # left over: written twice (paid.py)
                self.paid.forget(job.id, field_)
        if not recorded:
            return job
        log.info("recorded %d parked provider calls of job %s", recorded, job.id)
        return dataclasses.replace(job, attempts_made=job.attempts_made + recorded)

    def record(
        self,
        job: store.ClaimedJob,
        owner: str,
        link_text: str,
        record: store.AttemptRecord,
        hold: Hold | None = None,
    ) -> store.RecordedAttempt | None:
        """Write one paid call as the job's next attempt (parked in Redis while Postgres
        refuses) and settle its budget hold; None when the lease was lost."""
        recorded = None
        try:
            recorded = self.write(
                functools.partial(self.jobs.record_attempt, job.id, owner, self._lease_s, record)
            )
        except store.UNAVAILABLE:
            # Paid for, and Postgres still refuses: the next delivery records it (paid.py).
            if self.paid is not None:
                self.paid.park(job.id, record)
            raise
        finally:
            hooks.attempt(job, link_text, record, recorded.attempt_no if recorded else None)
            if hold is not None and self.budgets is not None:
                self.budgets.settle(hold, record.cost_usd)
        return recorded

    def call(
        self,
        job: store.ClaimedJob,
        owner: str,
        provider: Provider,
        link_text: str,
        request: CompletionRequest,
        hold: Hold | None = None,
    ) -> tuple[Completion | None, ProviderError | None]:
        """Call `provider` once and record the call (a refusal comes back as an error); raises
        JobCancelled when the client cancelled and there is no answer to keep."""
        started = time.perf_counter()
        completion: Completion | None = None
        error: ProviderError | None = None
        try:
            completion = provider.complete(request)
        except ProviderError as exc:
            error = exc
        latency_ms = (time.perf_counter() - started) * 1000
        if self.breaker is not None:
            self.breaker.record(
                link_text, ok=completion is not None, error_code=error.code if error else None
            )
        usage = completion.usage if completion is not None else error.usage if error else None
        input_tokens = usage.input_tokens if usage else 0
        output_tokens = usage.output_tokens if usage else 0
        cached_tokens = usage.cached_tokens if usage else 0
        cost = self.prices.cost(link_text, input_tokens, output_tokens, cached_tokens)
        record = store.AttemptRecord(
            provider=link_text.split(":", 1)[0],
            model=request.model,
            outcome="ok" if completion is not None else error.code if error else "error",
            latency_ms=round(latency_ms, 3),
            http_status=completion.http_status if completion else error.status if error else None,
            error_code=error.code if error else None,
            error_message=error.message[:500] if error else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            cost_usd=cost,
            worker=self.worker_name,
            # Only a complete answer is kept for recovery (not a refusal, not a cut-off).
            output=completion.text
            if completion is not None and completion.finish_reason not in ("refusal", "length")
            else None,
        )
        recorded = self.record(job, owner, link_text, record, hold)
        if completion is None and recorded is not None and recorded.cancel_requested:
            raise JobCancelled  # a result in hand is still returned; a retry is not started
        if completion is not None and completion.finish_reason == "refusal":
            return None, ProviderError("refusal", "the model refused", retryable=False)
        return completion, error

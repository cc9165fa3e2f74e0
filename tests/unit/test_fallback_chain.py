"""The fallback chain's decisions, in process: the real Pipeline on an InMemoryJobStore with
scripted providers (no Postgres, no Redis, no HTTP). Each test says what a user sees: the job's
status and error code, its route, how many provider calls were paid for, and its attempt rows."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from llmq.cost.budgets import Hold, Shortfall
from llmq.cost.pricing import ModelPrice, PriceTable
from llmq.errors import JobErrorCode
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.providers.base import Completion, CompletionRequest, ProviderError, Usage
from llmq.resilience.retry import RetryPolicy
from llmq.store import AttemptRecord, Outcome
from llmq.store.models import JobStatus
from llmq.testing.memory_store import InMemoryJobStore

DOC = (
    "The harbour authority approved a new ferry terminal. It will cost 40 million euros. "
    "Work starts in May. The old terminal closes next year. Ferries will run every hour."
)
ANSWER = "A new ferry terminal was approved; work starts in May."
RETRY = RetryPolicy(max_attempts=3, base_s=0.1, cap_s=1.0, inline_max_s=2.0)


def _price(context_window: int | None = None) -> ModelPrice:
    return ModelPrice(
        input=Decimal("1"), output=Decimal("2"), cached_input=Decimal("0.5"),
        context_window=context_window, effective_date="2025-01-01",
    )  # fmt: skip


PRICES = PriceTable(
    version="test",
    models={
        "openai:primary": _price(),
        "openai:tiny-window": _price(context_window=50),
        "anthropic:backup": _price(),
    },
)


def answer(text: str = ANSWER, finish_reason: str = "stop") -> Completion:
    return Completion(text, Usage(input_tokens=100, output_tokens=20), finish_reason)


def failure(
    code: str = "server_error", *, retryable: bool = True, retry_after_s: float | None = None
) -> ProviderError:
    return ProviderError(code, f"{code} from the provider", retryable=retryable,
                         status=500, retry_after_s=retry_after_s)  # fmt: skip


class ScriptedProvider:
    """Answers each call with the next step of its script (a Completion, or a ProviderError to
    raise); a call past the end of the script fails the test."""

    def __init__(self, name: str, *steps: Completion | ProviderError, configured: bool = True):
        self.name = name
        self.steps = list(steps)
        self.requests: list[CompletionRequest] = []
        self.configured = configured

    def is_configured(self) -> bool:
        return self.configured

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        assert self.steps, f"{self.name} was called more often than scripted"
        step = self.steps.pop(0)
        if isinstance(step, ProviderError):
            raise step
        return step


@dataclass
class FakeBreaker:
    """The CircuitBreaker's interface without Redis: `open` links refuse calls."""

    open: set[str] = field(default_factory=set)
    reopens_in_s: float = 30.0
    recorded: list[tuple[str, bool]] = field(default_factory=list)

    def allow(self, link: str) -> bool:
        return link not in self.open

    def record(self, link: str, *, ok: bool, error_code: str | None = None) -> None:
        self.recorded.append((link, ok))

    def reopens_in(self, link: str) -> float:
        return self.reopens_in_s if link in self.open else 0.0


class RefusingBudgets:
    """The BudgetGuard's interface: every reservation is refused by the daily budget."""

    def reserve(self, tenant_id: uuid.UUID, batch_id: uuid.UUID | None, link: str,
                prompt_tokens: int, max_tokens: int) -> Hold:  # fmt: skip
        spent = Decimal("5")
        return Hold(refused=Shortfall("daily", Decimal("5"), spent, Decimal("0.01")))

    def settle(self, hold: Hold, cost: Decimal | None) -> None:
        raise AssertionError("nothing was reserved, so nothing is settled")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def jobs(clock: Clock) -> InMemoryJobStore:
    return InMemoryJobStore(clock=clock)


def make_pipeline(
    jobs: InMemoryJobStore, *providers: ScriptedProvider, **options: Any
) -> tuple[Pipeline, list[float]]:
    """The pipeline and the waits it slept (its sleep is recorded, never real)."""
    sleeps: list[float] = []
    pipeline = Pipeline(
        jobs,
        {p.name: p for p in providers},
        PRICES,
        PipelineConfig(lease_s=30, retry=RETRY),
        sleep=sleeps.append,
        rng=random.Random(7),
        worker_name="unit",
        **options,
    )
    return pipeline, sleeps


def outcomes(jobs: InMemoryJobStore, job_id: str) -> list[tuple[int, str]]:
    return [(no, a.outcome) for no, a in jobs.attempts(job_id)]


# -- links that are not called -------------------------------------------------------------------


def test_an_unconfigured_link_is_skipped_and_the_next_answers(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai", configured=False)
    anthropic = ScriptedProvider("anthropic", answer())
    pipeline, _ = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    job = jobs.job(job_id)
    assert (job.result, job.provider, job.model) == (ANSWER, "anthropic", "backup")
    assert job.route == [
        {"link": "openai:primary", "skipped": "not_configured"},
        {"link": "anthropic:backup", "result": "ok"},
    ]
    assert openai.requests == [] and outcomes(jobs, job_id) == [(1, "ok")]


def test_a_chain_with_no_configured_link_fails_no_provider_available(
    jobs: InMemoryJobStore,
) -> None:
    pipeline, _ = make_pipeline(jobs, ScriptedProvider("openai", configured=False))
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == JobStatus.FAILED
    assert jobs.job(job_id).error_code == JobErrorCode.NO_PROVIDER_AVAILABLE


def test_a_link_whose_context_window_is_too_small_is_skipped(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai")
    anthropic = ScriptedProvider("anthropic", answer())
    pipeline, _ = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:tiny-window", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert jobs.job(job_id).route[0] == {
        "link": "openai:tiny-window",
        "skipped": "context_too_small",
    }
    assert openai.requests == []

    alone = jobs.add_job(["openai:tiny-window"], DOC)
    assert pipeline.run(alone) == JobStatus.FAILED
    assert jobs.job(alone).error_code == JobErrorCode.CONTEXT_TOO_LONG
    assert openai.requests == [] and jobs.attempts(alone) == []


def test_an_open_circuit_sends_the_job_to_the_next_link(jobs: InMemoryJobStore) -> None:
    breaker = FakeBreaker(open={"openai:primary"})
    openai = ScriptedProvider("openai")
    anthropic = ScriptedProvider("anthropic", answer())
    pipeline, _ = make_pipeline(jobs, openai, anthropic, breaker=breaker)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert jobs.job(job_id).route[0] == {"link": "openai:primary", "skipped": "circuit_open"}
    assert openai.requests == []
    assert breaker.recorded == [("anthropic:backup", True)]  # the call made is reported


def test_when_every_circuit_is_open_the_job_waits_for_the_probe_instead_of_failing(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    breaker = FakeBreaker(open={"openai:primary", "anthropic:backup"}, reopens_in_s=20.0)
    pipeline, _ = make_pipeline(
        jobs, ScriptedProvider("openai"), ScriptedProvider("anthropic"), breaker=breaker
    )
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == "deferred"
    job = jobs.job(job_id)
    assert job.status == JobStatus.RETRYING and job.error_code is None
    assert job.not_before == clock.now + 20.0
    assert job.deliveries == 0  # a planned wait is not a lost delivery


# -- retries, backoff and hand-backs -------------------------------------------------------------


def test_a_retryable_error_is_retried_after_the_policys_jittered_backoff(
    jobs: InMemoryJobStore,
) -> None:
    openai = ScriptedProvider("openai", failure(), failure(), answer())
    pipeline, sleeps = make_pipeline(jobs, openai)
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    replay = random.Random(7)  # the same draws the pipeline's rng made
    assert sleeps == [RETRY.delay(0, replay), RETRY.delay(1, replay)]
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2  # equal jitter, doubling
    assert outcomes(jobs, job_id) == [(1, "server_error"), (2, "server_error"), (3, "ok")]
    assert jobs.job(job_id).route == [{"link": "openai:primary", "result": "ok"}]


def test_a_providers_retry_after_is_the_wait(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai", failure("rate_limited", retry_after_s=1.5), answer())
    pipeline, sleeps = make_pipeline(jobs, openai)
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert sleeps == [1.5]


def test_a_non_retryable_error_moves_on_to_the_next_link_at_once(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai", failure("bad_request", retryable=False))
    anthropic = ScriptedProvider("anthropic", answer())
    pipeline, sleeps = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert len(openai.requests) == 1 and sleeps == []
    assert jobs.job(job_id).route == [
        {"link": "openai:primary", "result": "bad_request", "tries": 1},
        {"link": "anthropic:backup", "result": "ok"},
    ]
    assert outcomes(jobs, job_id) == [(1, "bad_request"), (2, "ok")]


def test_when_every_link_fails_the_job_fails_with_its_route(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai", failure(), failure(), failure())
    anthropic = ScriptedProvider("anthropic", failure("auth_error", retryable=False))
    pipeline, _ = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.FAILED
    job = jobs.job(job_id)
    assert job.error_code == JobErrorCode.ALL_PROVIDERS_FAILED
    assert job.route == [
        {"link": "openai:primary", "result": "server_error", "tries": 3},
        {"link": "anthropic:backup", "result": "auth_error", "tries": 1},
    ]
    assert job.error_message == (
        "every link failed: openai:primary (server_error), anthropic:backup (auth_error)"
    )
    assert [no for no, _ in jobs.attempts(job_id)] == [1, 2, 3, 4]
    assert job.cost_usd == 0  # errors that billed no tokens cost nothing


def test_a_long_backoff_hands_the_job_back_and_it_resumes_where_it_stopped(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    openai = ScriptedProvider("openai", failure("overloaded", retry_after_s=30.0), answer())
    pipeline, sleeps = make_pipeline(jobs, openai)
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == "deferred"
    job = jobs.job(job_id)
    assert (job.status, job.deliveries, job.not_before) == (JobStatus.RETRYING, 0, clock.now + 30)
    assert job.route == [{"link": "openai:primary", "result": "overloaded", "deferred_s": 30.0}]
    assert sleeps == []  # the wait is not spent holding a worker slot

    clock.now += 30
    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    # Attempt numbers go on from the first delivery's; the earlier failure still counts.
    assert outcomes(jobs, job_id) == [(1, "overloaded"), (2, "ok")]
    assert jobs.job(job_id).deliveries == 1


def test_a_link_that_used_its_tries_before_a_hand_back_is_not_tried_again(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    openai = ScriptedProvider("openai", failure(), failure(), failure())
    anthropic = ScriptedProvider("anthropic", failure("rate_limited", retry_after_s=30.0), answer())
    pipeline, _ = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == "deferred"
    clock.now += 30
    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert len(openai.requests) == 3  # not bought again after the hand-back
    assert jobs.job(job_id).route == [
        {"link": "openai:primary", "skipped": "exhausted_before_backoff"},
        {"link": "anthropic:backup", "result": "ok"},
    ]
    assert [no for no, _ in jobs.attempts(job_id)] == [1, 2, 3, 4, 5]


# -- money and output ----------------------------------------------------------------------------


def test_a_refused_budget_fails_the_job_before_any_call(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai")
    pipeline, _ = make_pipeline(jobs, openai, budgets=RefusingBudgets())
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == JobStatus.FAILED
    job = jobs.job(job_id)
    assert job.error_code == JobErrorCode.BUDGET_EXCEEDED
    assert job.error_message is not None and "daily budget" in job.error_message
    assert job.route == [{"link": "openai:primary", "skipped": "budget_exceeded"}]
    assert openai.requests == [] and jobs.attempts(job_id) == []


def test_output_blocked_by_a_guardrail_ends_the_job_blocked_without_a_retry(
    jobs: InMemoryJobStore,
) -> None:
    openai = ScriptedProvider("openai", answer("To clean up, run: DROP TABLE customers;"))
    anthropic = ScriptedProvider("anthropic")
    pipeline, _ = make_pipeline(jobs, openai, anthropic)
    job_id = jobs.add_job(["openai:primary", "anthropic:backup"], DOC)

    assert pipeline.run(job_id) == JobStatus.BLOCKED
    job = jobs.job(job_id)
    assert job.error_code == JobErrorCode.OUTPUT_BLOCKED and job.result is None
    assert len(openai.requests) == 1 and anthropic.requests == []
    assert outcomes(jobs, job_id) == [(1, "ok")]  # the call was paid for and is on record


def test_a_cut_off_answer_is_asked_again_once_with_more_room(jobs: InMemoryJobStore) -> None:
    openai = ScriptedProvider("openai", answer("A new ferry", "length"), answer())
    pipeline, _ = make_pipeline(jobs, openai)
    job_id = jobs.add_job(["openai:primary"], DOC)

    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    assert [r.max_tokens for r in openai.requests] == [512, 1024]
    job = jobs.job(job_id)
    assert job.result == ANSWER
    assert job.route == [
        {"link": "openai:primary", "result": JobErrorCode.TRUNCATED_OUTPUT, "retry": True},
        {"link": "openai:primary", "result": "ok"},
    ]


# -- deliveries and fencing ----------------------------------------------------------------------


def test_a_paid_answer_of_a_lost_delivery_is_used_without_a_new_call(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    job_id = jobs.add_job(["openai:primary"], DOC)
    lost = jobs.claim_job(job_id, "lost-worker", lease_s=30)
    assert lost is not None
    paid = AttemptRecord(provider="openai", model="primary", outcome="ok", latency_ms=900.0,
                         input_tokens=100, output_tokens=20, cost_usd=Decimal("0.0001"),
                         output="The answer the lost worker paid for.")  # fmt: skip
    assert jobs.record_attempt(lost.id, "lost-worker", 30, paid) is not None
    clock.now += 31  # the worker died: its lease expires

    openai = ScriptedProvider("openai")
    pipeline, _ = make_pipeline(jobs, openai)
    assert pipeline.run(job_id) == JobStatus.SUCCEEDED
    job = jobs.job(job_id)
    assert job.result == "The answer the lost worker paid for." and not job.cache_hit
    assert job.route == [
        {"link": "openai:primary", "result": "ok", "recovered_attempt": 1},
    ]
    assert openai.requests == [] and job.cost_usd == Decimal("0.0001")  # bought once
    assert job.deliveries == 2


def test_a_delivery_that_lost_its_lease_mid_call_cannot_overwrite_the_new_owner(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    job_id = jobs.add_job(["openai:primary"], DOC)
    taken_over: list[str] = []

    class SlowProvider(ScriptedProvider):
        def complete(self, request: CompletionRequest) -> Completion:
            # While this call hangs, the lease expires and a second delivery takes the job over
            # and finishes it.
            clock.now += 31
            second = jobs.claim_job(job_id, "second-delivery", lease_s=30)
            assert second is not None
            jobs.finish_job(second.id, "second-delivery", Outcome(JobStatus.SUCCEEDED, "theirs"))
            taken_over.append("second-delivery")
            return super().complete(request)

    pipeline, _ = make_pipeline(jobs, SlowProvider("openai", answer("mine")))
    pipeline.run(job_id)

    assert taken_over == ["second-delivery"]
    job = jobs.job(job_id)
    assert (job.status, job.result) == (JobStatus.SUCCEEDED, "theirs")
    assert jobs.attempts(job_id) == []  # the fenced-off delivery recorded nothing


def test_only_the_lease_owner_writes_and_attempt_numbers_are_unique(
    jobs: InMemoryJobStore, clock: Clock
) -> None:
    job_id = jobs.add_job(["openai:primary"], DOC)
    call = AttemptRecord(provider="openai", model="primary", outcome="ok", latency_ms=1.0)
    first = jobs.claim_job(job_id, "a", lease_s=30)
    assert first is not None
    assert jobs.claim_job(job_id, "b", lease_s=30) is None  # a live lease is not taken
    assert jobs.record_attempt(first.id, "a", 30, call) is not None
    clock.now += 31
    assert jobs.claim_job(job_id, "b", lease_s=30) is not None

    done = Outcome(JobStatus.SUCCEEDED, "late")
    assert jobs.record_attempt(first.id, "a", 30, call) is None
    assert jobs.finish_job(first.id, "a", done) is False
    assert jobs.defer_job(first.id, "a", 5.0, [], JobStatus.RETRYING) is False
    assert jobs.job(job_id).status == JobStatus.RUNNING

    recorded = [jobs.record_attempt(first.id, "b", 30, call) for _ in range(2)]
    assert [r.attempt_no for r in recorded if r is not None] == [2, 3]
    assert jobs.finish_job(first.id, "b", done) is True
    assert jobs.finish_job(first.id, "b", done) is False  # a job is finished once
    assert [no for no, _ in jobs.attempts(job_id)] == [1, 2, 3]
    assert jobs.job_ending(job_id) == (JobStatus.SUCCEEDED, None)

"""One job, start to finish: claim -> input guardrails -> cache -> provider chain (each link:
call, then output guardrails and review) -> record. Plain Python: the Celery task is a thin
wrapper around `run`; the record of truth is a `JobStore` (llmq/execution/job_store.py), so the
whole path also runs in memory (llmq/testing/memory_store.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llmq import store
from llmq.cost.budgets import BudgetGuard, Hold
from llmq.cost.pricing import PriceTable
from llmq.cost.tokens import estimate_tokens
from llmq.errors import JobErrorCode, LlmqError
from llmq.execution import dedup, output_review, routing
from llmq.execution.cache import CachedResult, ResultCache, cache_key
from llmq.execution.calls import JobCancelled, ProviderCalls
from llmq.execution.job_store import JobStore
from llmq.execution.leases import LeaseKeeper
from llmq.execution.outcomes import (
    CANCELLED,
    ChainRun,
    Deferred,
    NextLink,
    expired_outcome,
    from_cache,
    output_findings,
)
from llmq.execution.paid import PaidCalls
from llmq.execution.semantic_cache import SemanticCache
from llmq.execution.shadow import PRIMARY, Shadows
from llmq.guardrails import ChainResult, Guardrail, run_chain
from llmq.guardrails.job_guard import GuardedJob, guard_job
from llmq.guardrails.selection import GuardrailSelection
from llmq.longdocs.mapreduce import LongDocuments, Split
from llmq.providers.base import Completion, CompletionRequest, Provider, ProviderError
from llmq.providers.links import Link, parse_link
from llmq.resilience.circuit import CircuitBreaker
from llmq.resilience.ratelimit import RateLimiter
from llmq.resilience.retry import RetryPolicy
from llmq.settings import CacheScope
from llmq.store.models import JobStatus
from llmq.telemetry import hooks
from llmq.telemetry.events import EventPublisher
from llmq.templates import TEMPLATES, Rendered, Template, TemplateError, get_template

log = logging.getLogger(__name__)

# Params that do not change the question: no_cache asks for a fresh answer, the short-input
# route is already in the key as the chain it chose, semantic_cache is a lookup threshold.
NOT_IN_KEY = frozenset({"no_cache", routing.PARAM, "semantic_cache"})

# A link skipped because its circuit is open: when that is every link's reason, the job waits.
CIRCUIT_OPEN = "circuit_open"


@dataclass
class PipelineConfig:
    lease_s: float = 60.0
    max_deliveries: int = 3
    max_output_tokens: int = 512
    deadline_s: float = 600.0
    input_guardrails: list[str] = field(default_factory=lambda: ["prompt_injection", "pii"])
    output_guardrails: list[str] = field(default_factory=lambda: ["empty_output", "unsafe_output"])
    banned_terms: list[str] = field(default_factory=list)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    template_max_input_tokens: dict[str, int] = field(default_factory=dict)
    truncation_retry_max_tokens: int = 4096
    cache_scope: CacheScope = "tenant"  # LLMQ_CACHE_SCOPE
    db_retry_s: float = 30.0  # LLMQ_DB_RETRY_S
    rate_wait_max_s: float = 10.0  # LLMQ_RATE_WAIT_MAX_S


class LeaseHandedOver(LlmqError):
    """Postgres stayed unreachable after this delivery claimed the job. Its paid calls are
    parked (llmq/execution/paid.py) and it stops; the message that runs the job next passes `owner`
    to `Pipeline.run(resume=...)` and takes the lease over at once instead of waiting for it to
    expire. Its cause is the database error."""

    def __init__(self, job_id: str, owner: str) -> None:
        super().__init__(f"job {job_id}: Postgres unreachable, lease handed over")
        self.owner = owner


class Pipeline:
    def __init__(
        self,
        jobs: JobStore,
        providers: dict[str, Provider],
        prices: PriceTable,
        config: PipelineConfig,
        *,
        cache: ResultCache | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: RateLimiter | None = None,
        leases: LeaseKeeper | None = None,
        worker_name: str | None = None,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
        events: EventPublisher | None = None,
        long_documents: LongDocuments | None = None,
        budgets: BudgetGuard | None = None,
        inflight: dedup.InFlight | None = None,
        paid: PaidCalls | None = None,
        shadows: Shadows | None = None,
        semantic: SemanticCache | None = None,
    ) -> None:
        self.jobs = jobs
        self.providers = providers
        self.prices = prices
        self.config = config
        self.cache = cache
        self.breaker = breaker
        self.limiter = limiter
        self.leases = leases
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.budgets = budgets
        self.inflight = inflight
        self.events = events
        self.shadows = shadows  # shadow runs and the evaluation log (llmq/execution/shadow.py)
        self.semantic = semantic
        self.guardrails = GuardrailSelection(
            config.input_guardrails,
            config.output_guardrails,
            banned_terms=config.banned_terms,
            max_input_tokens=config.template_max_input_tokens,
            templates=TEMPLATES.values(),
        )
        self.long_documents = long_documents
        self.calls = ProviderCalls(
            jobs, prices, lease_s=config.lease_s, db_retry_s=config.db_retry_s,
            worker_name=worker_name, breaker=breaker, budgets=budgets, paid=paid,
            sleep=sleep, rng=self._rng,
        )  # fmt: skip

    # -----------------------------------------------------------------------------------------

    def run(self, job_id: str, resume: str | None = None) -> str:
        """Process one job message. Returns what happened (for logs); never raises for job
        errors. Postgres unreachable before the claim raises its error (the task retries the
        message); after the claim, LeaseHandedOver (the task retries the message, which takes
        the lease over). `resume` is the owner of such a handed-over lease."""
        owner = uuid.uuid4().hex
        job = self.jobs.claim_job(job_id, owner, self.config.lease_s, resume)
        if job is None:
            return "not_claimable"  # finished, cancelled, or running under a live lease
        try:
            status = self._run_claimed(job, owner, resumed=resume is not None)
        except store.UNAVAILABLE as exc:
            raise LeaseHandedOver(job_id, owner) from exc
        if self.events is not None:
            shown = JobStatus.RETRYING if status == "deferred" else status
            self.events.job_changed(job.id, job.batch_id, shown)
        return status

    def _run_claimed(self, job: store.ClaimedJob, owner: str, resumed: bool = False) -> str:
        if self.events is not None:
            self.events.job_changed(job.id, job.batch_id, JobStatus.RUNNING)
        if resumed or job.deliveries > 1:
            job = self.calls.record_parked(job, owner)
        if job.cancel_requested:
            self.calls.write(lambda: self.jobs.finish_job(job.id, owner, CANCELLED))
            return CANCELLED.status
        if job.deliveries > self.config.max_deliveries:
            outcome = store.Outcome(
                status=JobStatus.FAILED,
                error_code=JobErrorCode.WORKER_LOST,
                error_message=f"the job was interrupted {job.deliveries - 1} times",
            )
            if self.shadows is not None:  # a shadow lost this way is logged as failed
                outcome = self.shadows.attach(job, outcome)
            self.calls.write(lambda: self.jobs.finish_job(job.id, owner, outcome))
            return outcome.status
        hold = (
            self.leases.hold(job.id, owner) if self.leases is not None else contextlib.nullcontext()
        )
        with hold, hooks.job(job) as watch:
            try:
                result = self._process(job, owner)
            except store.UNAVAILABLE:
                raise
            except JobCancelled:
                result = CANCELLED
            except Exception as exc:  # a bug must end the job, not loop it through redelivery
                log.exception("job %s failed with an internal error", job.id)
                result = store.Outcome(
                    status=JobStatus.FAILED,
                    error_code=JobErrorCode.INTERNAL_ERROR,
                    error_message=f"{type(exc).__name__} in the pipeline",
                )
            watch.result = result
            if isinstance(result, Deferred):
                deferred = result
                handed_back = self.calls.write(
                    lambda: self.jobs.defer_job(
                        job.id, owner, deferred.delay_s, deferred.route, deferred.shown_as
                    )
                )
                if handed_back and result.then is not None:
                    result.then()
                return "deferred" if result.shown_as == JobStatus.RETRYING else result.shown_as
            if isinstance(result, Split):
                assert self.long_documents is not None
                self.long_documents.start(job, owner, result)
                return "split"
            outcome = result if self.shadows is None else self.shadows.attach(job, result)
            watch.recorded = self.calls.write(lambda: self.jobs.finish_job(job.id, owner, outcome))
            if watch.recorded and self.shadows is not None:
                self.shadows.publish(outcome)
            if job.parent_id is not None and self.long_documents is not None:
                self.long_documents.after_child(job.parent_id)
            return result.status

    # -----------------------------------------------------------------------------------------

    def _process(self, job: store.ClaimedJob, owner: str) -> store.Outcome | Deferred | Split:
        if job.expires_in_s is not None and job.expires_in_s <= 0:
            return expired_outcome()
        try:
            template = get_template(job.template, job.template_version)
        except TemplateError as exc:
            return store.Outcome(
                status=JobStatus.FAILED,
                error_code=JobErrorCode.BAD_TEMPLATE,
                error_message=str(exc),
            )

        guarded = self._guard_input(job, template)
        if isinstance(guarded, store.Outcome):
            return guarded
        findings = guarded.findings
        # From here on the job is its guarded self (the stored row is left as it is).
        job = replace(job, input=guarded.input, params=guarded.params)
        if self.long_documents is not None:  # too long for one job: map-reduce (mapreduce.py)
            split = self.long_documents.plan(job, template, job.input, findings)
            if split is not None:
                return split

        try:
            rendered = template.render(job.input, job.params)
        except TemplateError as exc:
            return store.Outcome(
                status=JobStatus.FAILED,
                error_code=JobErrorCode.BAD_TEMPLATE,
                error_message=str(exc),
                guardrails=findings,
            )

        # A short input may try a cheaper model first (routing.py); the key is of the chain used.
        choice = routing.choose_chain(job.chain, job.params, estimate_tokens(job.input))
        # no_cache asks for a fresh answer, not a different question: same key either way.
        answer_params = {k: v for k, v in job.params.items() if k not in NOT_IN_KEY}
        key = cache_key(
            choice.links,
            template.name,
            template.version,
            asdict(rendered),
            answer_params,
            scope=self.config.cache_scope,
            tenant_id=job.tenant_id,
        )
        # A previous delivery got (and paid for) an answer, then could not finish the job: finish
        # from that answer before looking at the cache, so the job's route and cost stay those
        # of the call that was made (never rewritten into a cache hit).
        prior = self.jobs.prior_attempts(job.id) if job.attempts_made else []
        recovered = self._recovered(job, prior, template, findings)
        if recovered is not None:
            return choice.noted(recovered)
        turn: dedup.Turn = dedup.Alone()
        # Only a client's job uses the cache: a shadow's (or its judge's) answer is never served
        # from it nor stored in it.
        if self.cache is not None and not job.params.get("no_cache") and job.kind == PRIMARY:
            with hooks.stage("cache.lookup"):
                hit, turn = dedup.look_up(self.cache, self.inflight, key, str(job.id))
            if hit is not None:
                return choice.noted(from_cache(hit, [{"link": "cache", "result": "ok"}], findings))
            if isinstance(turn, dedup.Follow) and self.inflight is not None:
                # An identical job is computing this answer: wait for it off the worker.
                then = functools.partial(self.inflight.after_hand_back, key, str(job.id))
                wait = [dict(dedup.WAITING)]
                return choice.noted(Deferred(turn.delay_s, wait, JobStatus.QUEUED, then))
        with dedup.leading(self.inflight, turn, key, str(job.id)) as answer:
            # Semantic cache (semantic_cache.py): after the exact cache, before the chain.
            # Only a client's job: a shadow's answer is never served from a cache nor stored in one.
            probe = (
                self.semantic.probe(job, owner, template, choice.links, self.calls)
                if self.semantic is not None and job.kind == PRIMARY
                else None
            )
            answer.value = (probe.outcome(findings) if probe is not None else None) or (
                self._answer(job, owner, rendered, findings, template, key, choice, prior)
            )
            if probe is not None and self.semantic is not None:
                self.semantic.remember(probe, job, answer.value)
        return choice.noted(answer.value)

    def _guard_input(self, job: store.ClaimedJob, template: Template) -> GuardedJob | store.Outcome:
        """The job's texts through the input chain, or the outcome that stops it."""
        try:
            with hooks.stage("guardrails.input"):
                # Every text that reaches the provider (input, variables, ...), before the cache
                # key is computed: neither the cache nor an attempt ever sees a raw value.
                guarded = guard_job(
                    self.guardrails.input_for(template), template, job.input, job.params
                )
        except Exception:
            log.exception("input guardrail crashed on job %s", job.id)
            return store.Outcome(
                status=JobStatus.FAILED,
                error_code=JobErrorCode.GUARDRAIL_ERROR,
                error_message="an input guardrail failed; the job was stopped (fail closed)",
            )
        if guarded.blocked_by:
            hooks.blocked("input", guarded.blocked_by)
            where = f" in {guarded.blocked_field}" if guarded.blocked_field else ""
            return store.Outcome(
                status=JobStatus.BLOCKED,
                error_code=JobErrorCode.INPUT_BLOCKED,
                error_message=f"input blocked by guardrail rule {guarded.blocked_by}{where}",
                guardrails=guarded.findings,
            )
        return guarded

    def _recovered(
        self,
        job: store.ClaimedJob,
        prior: list[dict[str, Any]],
        template: Template,
        findings: list[dict[str, Any]],
    ) -> store.Outcome | None:
        """The outcome from the last recorded answer, if it is one the job can end with."""
        last = prior[-1] if prior else None
        if (
            last is None
            or last["output"] is None
            # A JSON answer would need its review replayed too.
            or output_review.OutputSpec.from_params(job.params).wants_json
            or self._check_text(last["output"], self.guardrails.output_for(template)).blocked_by
            is not None
        ):
            return None
        return store.Outcome(
            status=JobStatus.SUCCEEDED, result=last["output"],
            provider=last["provider"], model=last["model"],
            route=[{"link": f"{last['provider']}:{last['model']}", "result": "ok",
                    "recovered_attempt": last["attempt_no"]}],
            guardrails=findings,
        )  # fmt: skip

    def _answer(
        self,
        job: store.ClaimedJob,
        owner: str,
        rendered: Rendered,
        findings: list[dict[str, Any]],
        template: Template,
        key: str,
        choice: routing.ChainChoice,
        prior: list[dict[str, Any]],
    ) -> store.Outcome | Deferred:
        with hooks.stage("provider_chain", chain=",".join(choice.links)):
            outcome = self._run_chain(
                job, owner, rendered, findings, self.guardrails.output_for(template),
                choice.links, prior,
            )  # fmt: skip
        if not isinstance(outcome, store.Outcome) or self.cache is None or job.kind != PRIMARY:
            return outcome
        if (
            outcome.status == JobStatus.SUCCEEDED
            and outcome.result is not None
            # A cut-off answer is not cached: a hit could not say it was cut off.
            and output_review.finish_reason(outcome.route) == "stop"
        ):
            self.cache.put(
                key,
                CachedResult(outcome.result, outcome.provider or "", outcome.model or ""),
            )
        elif outcome.error_code == JobErrorCode.ALL_PROVIDERS_FAILED:
            # The cache is the chain's last link: an earlier answer beats none (cache_hit says
            # which it is), even for a job that asked for a fresh one.
            hit = self.cache.get(key)
            if hit is not None:
                route = [*(outcome.route or []), {"link": "cache", "result": "ok"}]
                return from_cache(hit, route, findings)
        return outcome

    def _run_chain(
        self,
        job: store.ClaimedJob,
        owner: str,
        rendered: Rendered,
        findings: list[dict[str, Any]],
        output_guards: list[Guardrail],
        chain: list[str],
        prior: list[dict[str, Any]],
    ) -> store.Outcome | Deferred:
        """The fallback loop: each link in order until one answers, the job must stop, or it
        waits; when every link gave up, why the chain failed."""
        run = self._chain_run(job, owner, rendered, findings, output_guards)
        # A job resumed after a long backoff continues where it stopped, attempts included.
        failures_before: Counter[str] = Counter(
            f"{a['provider']}:{a['model']}" for a in prior if a["outcome"] != "ok"
        )
        failures: list[str] = []
        for link_text in chain:
            step = self._try_link(run, link_text, failures_before[link_text])
            if not isinstance(step, NextLink):
                return step
            if step.failure is not None:
                failures.append(step.failure)
        return self._chain_failed(run, failures)

    def _chain_run(
        self,
        job: store.ClaimedJob,
        owner: str,
        rendered: Rendered,
        findings: list[dict[str, Any]],
        output_guards: list[Guardrail],
    ) -> ChainRun:
        spec = output_review.OutputSpec.from_params(job.params)
        max_tokens = int(job.params.get("max_tokens") or self.config.max_output_tokens)
        return ChainRun(
            job, owner, rendered, findings, output_guards, spec,
            review=output_review.OutputReview(spec, self.config.truncation_retry_max_tokens),
            max_tokens=max_tokens,
            prompt_tokens=estimate_tokens(rendered.user) + estimate_tokens(rendered.system or ""),
            deadline=time.monotonic() + self.config.deadline_s - job.age_s,
            window_ends=None if job.expires_in_s is None else time.monotonic() + job.expires_in_s,
        )  # fmt: skip

    def _try_link(
        self, run: ChainRun, link_text: str, tries: int
    ) -> store.Outcome | Deferred | NextLink:
        """One link: skipped, or called (again after a retryable error, or with a reviewed
        request) until it answers, gives up (NextLink), or the job must stop or wait."""
        link = parse_link(link_text)
        provider = self.providers.get(link.provider)
        skipped = self._skip(run, link_text, provider, tries)
        if skipped is not None:
            return skipped
        assert provider is not None
        policy = self.config.retry
        request = run.request(link.model)
        while True:
            stop = self._wait_for_call(run, link_text)
            if stop is not None:
                return stop
            # Budgets: no call whose estimate the budget left cannot cover.
            hold = self._reserve(run, link_text)
            if hold is not None and hold.refused is not None:
                run.route.append({"link": link_text, "skipped": "budget_exceeded"})
                return run.failed(JobErrorCode.BUDGET_EXCEEDED, hold.refused.message())
            with hooks.stage("provider.call", link=link_text):
                completion, error = self.calls.call(
                    run.job, run.owner, provider, link_text, request, hold
                )
            if self.limiter is not None:  # the response's rate-limit headers teach the limiter
                self.limiter.learn(link_text, completion, error)
            if completion is not None:
                reviewed = self._review(run, link, completion, request)
                if isinstance(reviewed, CompletionRequest):  # asked again, once per kind
                    request = reviewed
                    continue
                if isinstance(reviewed, store.Outcome):
                    return reviewed
                error = reviewed
            assert error is not None
            tries += 1
            if not error.retryable or tries >= policy.max_attempts:
                run.route.append({"link": link_text, "result": error.code, "tries": tries})
                return NextLink(error.code)
            delay = policy.delay(tries - 1, self._rng, error.retry_after_s)
            hooks.retry(link_text, error.code)
            if policy.should_defer(delay):
                run.route.append({"link": link_text, "result": error.code, "deferred_s": delay})
                return Deferred(delay, run.route)
            self._sleep(delay)

    def _skip(
        self, run: ChainRun, link_text: str, provider: Provider | None, tries: int
    ) -> NextLink | None:
        """Why the link is not called at all (its route entry written), or None to call it."""
        if provider is None or not provider.is_configured():
            return run.skip(link_text, "not_configured")
        price = self.prices.get(link_text)
        window = price.context_window if price else None
        if window is not None and run.prompt_tokens + run.max_tokens > window:
            return run.skip(link_text, "context_too_small", JobErrorCode.CONTEXT_TOO_LONG)
        if self.breaker is not None and not self.breaker.allow(link_text):
            return run.skip(link_text, "circuit_open", CIRCUIT_OPEN)
        if tries >= self.config.retry.max_attempts:
            return run.skip(link_text, "exhausted_before_backoff")
        return None

    def _wait_for_call(self, run: ChainRun, link_text: str) -> store.Outcome | Deferred | None:
        """Before each call: stop once the batch window or the deadline has passed; wait for
        room under the shared rate limit. None: call now."""
        policy = self.config.retry
        while True:
            if run.window_ends is not None and time.monotonic() >= run.window_ends:
                return expired_outcome(run.route)  # no provider call after the window closes
            if time.monotonic() >= run.deadline:
                run.route.append({"link": link_text, "skipped": "deadline_exceeded"})
                return run.failed(
                    JobErrorCode.DEADLINE_EXCEEDED,
                    f"the job ran out of its {self.config.deadline_s:g} s deadline",
                )
            if self.limiter is None:
                return None
            # A slot a short sleep away is reserved (learned limits are paced: adaptive.py),
            # never one past the job's deadline.
            horizon = min(self.config.rate_wait_max_s, run.deadline - time.monotonic())
            admission = self.limiter.admit(
                link_text, run.prompt_tokens + run.max_tokens, max(0.0, horizon)
            )
            if admission.admitted:
                if admission.wait_s > 0:
                    hooks.rate_limited(link_text, handed_back=False)
                    self._sleep(admission.wait_s)
                return None
            wait = admission.wait_s
            # No capacity under the shared limit: wait briefly, or give the slot back and let
            # the job come back when there is room (never eat a 429).
            hooks.rate_limited(link_text, handed_back=policy.should_defer(wait))
            if policy.should_defer(wait):
                run.route.append({"link": link_text, "rate_limited_s": round(wait, 3)})
                return Deferred(wait, run.route)
            self._sleep(wait)

    def _reserve(self, run: ChainRun, link_text: str) -> Hold | None:
        if self.budgets is None:
            return None
        return self.budgets.reserve(
            run.job.tenant_id, run.job.batch_id, link_text, run.prompt_tokens, run.max_tokens
        )

    def _review(
        self, run: ChainRun, link: Link, completion: Completion, request: CompletionRequest
    ) -> store.Outcome | CompletionRequest | ProviderError:
        """An answer's fate: the job's outcome, the request to send again (cut off, or not the
        JSON asked for), or an error to retry (an empty answer). Unsafe output is blocked
        first; then a cut-off answer is retried or failed; then the JSON the job asked for is
        checked (llmq/execution/output_review.py)."""
        link_text, provider, model = str(link), link.provider, link.model
        checked = self._check_output(completion, run.output_guards)
        verdict = checked.blocked_by
        # An empty answer is worth another call; any other output rule (built in or a plugin)
        # blocks the job.
        unsafe = verdict is not None and verdict != "empty_output"
        step: output_review.Step | None = (
            None if unsafe else run.review.truncation(completion, request)
        )
        if step is None and verdict is None:
            step = run.review.format(checked.text, request)
        if isinstance(step, output_review.Retry):
            run.route.append({"link": link_text, "result": step.reason, "retry": True})
            run.findings.append(
                {"rule": step.reason, "action": "retry", "count": 1, "stage": "output"}
            )
            return step.request
        if isinstance(step, output_review.Fail):
            run.route.append({"link": link_text, "result": step.code})
            return store.Outcome(
                status=JobStatus.FAILED, error_code=step.code, error_message=step.message,
                provider=provider, model=model, route=run.route, guardrails=run.findings,
            )  # fmt: skip
        if verdict is None:
            answered: dict[str, Any] = {"link": link_text, "result": "ok"}
            if completion.finish_reason == "length":  # an accepted truncation
                answered["finish_reason"] = "length"
            run.route.append(answered)
            run.findings.extend(output_findings(checked))
            return store.Outcome(
                status=JobStatus.SUCCEEDED,
                result=step.text if step is not None else checked.text,
                provider=provider, model=model, route=run.route, guardrails=run.findings,
            )  # fmt: skip
        if unsafe:
            hooks.blocked("output", verdict)
            run.route.append({"link": link_text, "result": verdict})
            run.findings.extend(output_findings(checked))
            return store.Outcome(
                status=JobStatus.BLOCKED, error_code=JobErrorCode.OUTPUT_BLOCKED,
                error_message=f"output blocked by guardrail rule {verdict}",
                provider=provider, model=model, route=run.route, guardrails=run.findings,
            )  # fmt: skip
        return ProviderError(verdict, f"output rejected: {verdict}", retryable=True)

    def _chain_failed(self, run: ChainRun, failures: list[str]) -> store.Outcome | Deferred:
        """Every link gave up: the job's failure, or a wait when every usable link is only
        cooling down (nothing was tried): a minute from now it would succeed."""
        if set(failures) == {CIRCUIT_OPEN} and self.breaker is not None:
            cooling = [r["link"] for r in run.route if r.get("skipped") == "circuit_open"]
            wait = min(self.breaker.reopens_in(link) for link in cooling)
            if time.monotonic() + wait < run.deadline:
                return Deferred(max(wait, 0.5), run.route)
        if not failures:
            code, message = JobErrorCode.NO_PROVIDER_AVAILABLE, "no link of the chain is configured"
        elif set(failures) == {JobErrorCode.CONTEXT_TOO_LONG}:
            code = JobErrorCode.CONTEXT_TOO_LONG
            message = "the input does not fit any model of the chain"
        else:
            code = JobErrorCode.ALL_PROVIDERS_FAILED
            message = "every link failed: " + ", ".join(
                f"{r['link']} ({r.get('result') or r.get('skipped')})" for r in run.route
            )
        return run.failed(code, message)

    def _check_output(self, completion: Completion, guards: list[Guardrail]) -> ChainResult:
        """The output chain's result: `blocked_by` names the rule that rejected the output."""
        return self._check_text(completion.text, guards)

    def _check_text(self, text: str, guards: list[Guardrail]) -> ChainResult:
        try:
            with hooks.stage("guardrails.output"):
                return run_chain(guards, text)
        except Exception:
            log.exception("output guardrail crashed")
            return ChainResult(text, blocked_by="unsafe_output.guardrail_error")

    # -----------------------------------------------------------------------------------------
    # The provider Batch lane (llmq/execution/lane.py): the same input guard, rendering and
    # output review as a sync call, around an upstream batch instead of a call.

    def lane_prepare(self, job: store.ClaimedJob) -> store.Outcome | LaneItem | None:
        """The job guarded and rendered for an upload, or the outcome that ends it now (blocked,
        bad template, expired); None when it is not for the lane (a long document to split)."""
        if job.expires_in_s is not None and job.expires_in_s <= 0:
            return expired_outcome()
        try:
            template = get_template(job.template, job.template_version)
        except TemplateError as exc:
            return store.Outcome(
                status=JobStatus.FAILED, error_code=JobErrorCode.BAD_TEMPLATE,
                error_message=str(exc),
            )  # fmt: skip
        guarded = self._guard_input(job, template)
        if isinstance(guarded, store.Outcome):
            return guarded
        job = replace(job, input=guarded.input, params=guarded.params)
        if self.long_documents is not None and (
            self.long_documents.plan(job, template, job.input, guarded.findings) is not None
        ):
            return None
        try:
            rendered = template.render(job.input, job.params)
        except TemplateError as exc:
            return store.Outcome(
                status=JobStatus.FAILED, error_code=JobErrorCode.BAD_TEMPLATE,
                error_message=str(exc), guardrails=guarded.findings,
            )  # fmt: skip
        choice = routing.choose_chain(job.chain, job.params, estimate_tokens(job.input))
        return LaneItem(job, template, rendered, guarded.findings, choice)

    def lane_run(self, item: LaneItem, owner: str) -> ChainRun:
        """The chain walk a lane answer is reviewed in (the request it was asked with)."""
        guards = self.guardrails.output_for(item.template)
        return self._chain_run(item.job, owner, item.rendered, list(item.findings), guards)

    def lane_review(
        self, run: ChainRun, link_text: str, completion: Completion, item: LaneItem
    ) -> store.Outcome | None:
        """An upstream answer reviewed exactly as a sync answer; None when the sync lane must
        take over (an empty, cut-off or malformed answer the sync lane would ask again)."""
        link = parse_link(link_text)
        reviewed = self._review(run, link, completion, run.request(link.model))
        return item.choice.noted(reviewed) if isinstance(reviewed, store.Outcome) else None


@dataclass(frozen=True)
class LaneItem:
    """A lane job, guarded and rendered: what an upload carries for it."""

    job: store.ClaimedJob  # its guarded self
    template: Template
    rendered: Rendered
    findings: list[dict[str, Any]]
    choice: routing.ChainChoice

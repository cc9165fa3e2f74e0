"""One job, start to finish: claim -> input guardrails -> cache -> provider chain ->
output guardrails -> record. Plain Python: the Celery task is a thin wrapper around `run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import redis
from sqlalchemy import Engine

from llmq import store
from llmq.cost.budgets import BudgetGuard, Hold
from llmq.cost.pricing import PriceTable
from llmq.cost.tokens import estimate_tokens
from llmq.errors import LlmqError
from llmq.execution import dedup, output_review, routing
from llmq.execution.cache import CachedResult, ResultCache, cache_key
from llmq.execution.paid import PaidCalls
from llmq.guardrails import ChainResult, Guardrail, run_chain
from llmq.guardrails.job_guard import guard_job
from llmq.guardrails.selection import GuardrailSelection
from llmq.longdocs.mapreduce import LongDocuments, Split
from llmq.providers.base import Completion, CompletionRequest, Provider, ProviderError
from llmq.providers.links import parse_link
from llmq.resilience.circuit import CircuitBreaker
from llmq.resilience.ratelimit import RateLimiter
from llmq.resilience.retry import RetryPolicy, retry_call
from llmq.settings import CacheScope
from llmq.store.models import JobStatus
from llmq.telemetry import hooks
from llmq.telemetry.events import EventPublisher
from llmq.templates import TEMPLATES, Rendered, Template, TemplateError, get_template

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Params that do not change the question: no_cache asks for a fresh answer, and the short-input
# route is already in the key as the chain it chose.
NOT_IN_KEY = frozenset({"no_cache", routing.PARAM})

# Waits between tries of a write that records paid work or ends a job (LLMQ_DB_RETRY_S bounds
# the total): short first, since most refusals (too many clients) clear in a moment.
DB_WRITE_RETRY = RetryPolicy(base_s=0.2, cap_s=4.0)


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


def _from_cache(
    hit: CachedResult, route: list[dict[str, Any]], findings: list[dict[str, Any]]
) -> store.Outcome:
    return store.Outcome(
        status=JobStatus.SUCCEEDED, result=hit.text, provider=hit.provider, model=hit.model,
        cache_hit=True, route=route, guardrails=findings,
    )  # fmt: skip


class JobCancelled(LlmqError):
    """The client cancelled the job while it ran; raised at the next step."""


class LeaseHandedOver(LlmqError):
    """Postgres stayed unreachable after this delivery claimed the job. Its paid calls are
    parked (llmq/execution/paid.py) and it stops; the message that runs the job next passes `owner`
    to `Pipeline.run(resume=...)` and takes the lease over at once instead of waiting for it to
    expire. Its cause is the database error."""

    def __init__(self, job_id: str, owner: str) -> None:
        super().__init__(f"job {job_id}: Postgres unreachable, lease handed over")
        self.owner = owner


CANCELLED = store.Outcome(
    status=JobStatus.CANCELLED, error_code="cancelled", error_message="cancelled by the client"
)


@dataclass(frozen=True)
class Deferred:
    delay_s: float
    route: list[dict[str, Any]]
    shown_as: str = JobStatus.RETRYING  # or QUEUED: waiting for an identical job (dedup.py)
    then: Callable[[], None] | None = None  # run once the hand-back is written


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        providers: dict[str, Provider],
        prices: PriceTable,
        config: PipelineConfig,
        *,
        cache: ResultCache | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: RateLimiter | None = None,
        leases: Any = None,
        worker_name: str | None = None,
        sleep: Any = time.sleep,
        rng: random.Random | None = None,
        events: EventPublisher | None = None,
        long_documents: LongDocuments | None = None,
        budgets: BudgetGuard | None = None,
        inflight: dedup.InFlight | None = None,
        paid: PaidCalls | None = None,
    ) -> None:
        self.engine = engine
        self.providers = providers
        self.prices = prices
        self.config = config
        self.cache = cache
        self.breaker = breaker
        self.limiter = limiter
        self.leases = leases
        self.worker_name = worker_name
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.budgets = budgets
        self.inflight = inflight
        self.paid = paid
        self.events = events
        self.guardrails = GuardrailSelection(
            config.input_guardrails,
            config.output_guardrails,
            banned_terms=config.banned_terms,
            max_input_tokens=config.template_max_input_tokens,
            templates=TEMPLATES.values(),
        )
        self.long_documents = long_documents

    # -----------------------------------------------------------------------------------------

    def run(self, job_id: str, resume: str | None = None) -> str:
        """Process one job message. Returns what happened (for logs); never raises for job
        errors. Postgres unreachable before the claim raises its error (the task retries the
        message); after the claim, LeaseHandedOver (the task retries the message, which takes
        the lease over). `resume` is the owner of such a handed-over lease."""
        owner = uuid.uuid4().hex
        job = store.claim_job(self.engine, job_id, owner, self.config.lease_s, resume)
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
        if self.paid is not None and (resumed or job.deliveries > 1):
            job = self._record_parked(job, owner)
        if job.cancel_requested:
            self._write(lambda: store.finish_job(self.engine, job.id, owner, CANCELLED))
            return CANCELLED.status
        if job.deliveries > self.config.max_deliveries:
            outcome = store.Outcome(
                status=JobStatus.FAILED,
                error_code="worker_lost",
                error_message=f"the job was interrupted {job.deliveries - 1} times",
            )
            self._write(lambda: store.finish_job(self.engine, job.id, owner, outcome))
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
                    error_code="internal_error",
                    error_message=f"{type(exc).__name__} in the pipeline",
                )
            watch.result = result
            if isinstance(result, Deferred):
                deferred = result
                handed_back = self._write(
                    lambda: store.defer_job(
                        self.engine, job.id, owner, deferred.delay_s, deferred.route,
                        deferred.shown_as,
                    )
                )  # fmt: skip
                if handed_back and result.then is not None:
                    result.then()
                return "deferred" if result.shown_as == JobStatus.RETRYING else result.shown_as
            if isinstance(result, Split):
                assert self.long_documents is not None
                self.long_documents.start(job, owner, result)
                return "split"
            outcome = result
            watch.recorded = self._write(
                lambda: store.finish_job(self.engine, job.id, owner, outcome)
            )
            if job.parent_id is not None and self.long_documents is not None:
                self.long_documents.after_child(job.parent_id)
            return result.status

    def _write(self, write: Callable[[], _T]) -> _T:
        """A write that records paid work or moves a claimed job on, tried again through a
        short Postgres refusal (bounded by LLMQ_DB_RETRY_S, jittered waits) while the lease
        keeper holds the lease: a refusal costs a moment, not a lease or a paid answer."""
        return retry_call(
            write,
            retry_on=store.UNAVAILABLE,
            budget_s=self.config.db_retry_s,
            policy=DB_WRITE_RETRY,
            sleep=self._sleep,
            rng=self._rng,
        )

    def _record_parked(self, job: store.ClaimedJob, owner: str) -> store.ClaimedJob:
        """Write the attempts an earlier delivery paid for but could not record (paid.py), so
        that the recovery below finishes from them; the job as it now stands."""
        assert self.paid is not None
        try:
            parked = self.paid.parked(job.id)
        except redis.RedisError as exc:
            log.warning("could not read parked calls of job %s: %s", job.id, type(exc).__name__)
            return job
        recorded = 0
        for field_, record in parked:
            written = self._write(
                functools.partial(
                    store.record_attempt, self.engine, job.id, owner, self.config.lease_s,
                    record,
                )
            )  # fmt: skip
            if written is None:  # lost the lease: the new owner records them
                break
            recorded += 1
            with contextlib.suppress(redis.RedisError):  # left over: written twice (paid.py)
                self.paid.forget(job.id, field_)
        if not recorded:
            return job
        log.info("recorded %d parked provider calls of job %s", recorded, job.id)
        return dataclasses.replace(job, attempts_made=job.attempts_made + recorded)

    # -----------------------------------------------------------------------------------------

    def _process(self, job: store.ClaimedJob, owner: str) -> store.Outcome | Deferred | Split:
        if job.expires_in_s is not None and job.expires_in_s <= 0:
            return expired_outcome()
        try:
            template = get_template(job.template, job.template_version)
        except TemplateError as exc:
            return store.Outcome(
                status=JobStatus.FAILED, error_code="bad_template", error_message=str(exc)
            )

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
                error_code="guardrail_error",
                error_message="an input guardrail failed; the job was stopped (fail closed)",
            )
        findings = guarded.findings
        if guarded.blocked_by:
            hooks.blocked("input", guarded.blocked_by)
            where = f" in {guarded.blocked_field}" if guarded.blocked_field else ""
            return store.Outcome(
                status=JobStatus.BLOCKED,
                error_code="input_blocked",
                error_message=f"input blocked by guardrail rule {guarded.blocked_by}{where}",
                guardrails=findings,
            )
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
                error_code="bad_template",
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
        prior = store.prior_attempts(self.engine, job.id) if job.attempts_made else []
        recovered = self._recovered(job, prior, template, findings)
        if recovered is not None:
            return choice.noted(recovered)
        turn: dedup.Turn = dedup.Alone()
        if self.cache is not None and not job.params.get("no_cache"):
            with hooks.stage("cache.lookup"):
                hit, turn = dedup.look_up(self.cache, self.inflight, key, str(job.id))
            if hit is not None:
                return choice.noted(_from_cache(hit, [{"link": "cache", "result": "ok"}], findings))
            if isinstance(turn, dedup.Follow) and self.inflight is not None:
                # An identical job is computing this answer: wait for it off the worker.
                then = functools.partial(self.inflight.after_hand_back, key, str(job.id))
                wait = [dict(dedup.WAITING)]
                return choice.noted(Deferred(turn.delay_s, wait, JobStatus.QUEUED, then))
        with dedup.leading(self.inflight, turn, key, str(job.id)) as answer:
            answer.value = self._answer(
                job, owner, rendered, findings, template, key, choice, prior
            )
        return choice.noted(answer.value)

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
        if not isinstance(outcome, store.Outcome) or self.cache is None:
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
        elif outcome.error_code == "all_providers_failed":
            # The cache is the chain's last link: an earlier answer beats none (cache_hit says
            # which it is), even for a job that asked for a fresh one.
            hit = self.cache.get(key)
            if hit is not None:
                route = [*(outcome.route or []), {"link": "cache", "result": "ok"}]
                return _from_cache(hit, route, findings)
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
        policy = self.config.retry
        spec = output_review.OutputSpec.from_params(job.params)
        review = output_review.OutputReview(spec, self.config.truncation_retry_max_tokens)
        max_tokens = int(job.params.get("max_tokens") or self.config.max_output_tokens)
        prompt_tokens = estimate_tokens(rendered.user) + estimate_tokens(rendered.system or "")
        # A job resumed after a long backoff continues where it stopped, attempts included.
        failures_before: Counter[str] = Counter(
            f"{a['provider']}:{a['model']}" for a in prior if a["outcome"] != "ok"
        )

        route: list[dict[str, Any]] = []
        failure_codes: list[str] = []
        deadline = time.monotonic() + self.config.deadline_s - job.age_s
        window_ends = None if job.expires_in_s is None else time.monotonic() + job.expires_in_s
        for link_text in chain:
            link = parse_link(link_text)
            provider = self.providers.get(link.provider)
            if provider is None or not provider.is_configured():
                route.append({"link": link_text, "skipped": "not_configured"})
                continue
            price = self.prices.get(link_text)
            window = price.context_window if price else None
            if window is not None and prompt_tokens + max_tokens > window:
                route.append({"link": link_text, "skipped": "context_too_small"})
                failure_codes.append("context_too_long")
                continue
            if self.breaker is not None and not self.breaker.allow(link_text):
                route.append({"link": link_text, "skipped": "circuit_open"})
                failure_codes.append("circuit_open")
                continue
            tries = failures_before[link_text]
            if tries >= policy.max_attempts:
                route.append({"link": link_text, "skipped": "exhausted_before_backoff"})
                continue
            request = output_review.prepare(
                CompletionRequest(
                    model=link.model,
                    user=rendered.user,
                    system=rendered.system,
                    max_tokens=max_tokens,
                    temperature=job.params.get("temperature"),
                    document=rendered.document,
                    style=rendered.style,
                    messages=rendered.messages,
                ),
                spec,
            )
            while True:
                if window_ends is not None and time.monotonic() >= window_ends:
                    return expired_outcome(route)  # no provider call after the window closes
                if time.monotonic() >= deadline:
                    route.append({"link": link_text, "skipped": "deadline_exceeded"})
                    return store.Outcome(
                        status=JobStatus.FAILED, error_code="deadline_exceeded",
                        error_message=f"the job ran out of its {self.config.deadline_s:g} s "
                        "deadline", route=route, guardrails=findings,
                    )  # fmt: skip
                if self.limiter is not None:
                    wait = self.limiter.acquire(link_text, prompt_tokens + max_tokens)
                    if wait > 0:
                        hooks.rate_limited(link_text, handed_back=policy.should_defer(wait))
                        # No capacity under the shared limit: wait briefly, or give the slot
                        # back and let the job come back when there is room (never eat a 429).
                        if policy.should_defer(wait):
                            route.append({"link": link_text, "rate_limited_s": round(wait, 3)})
                            return Deferred(wait, route)
                        self._sleep(wait)
                        continue
                # Budgets: no call whose estimate the budget left cannot cover.
                hold = None
                if self.budgets is not None:
                    hold = self.budgets.reserve(
                        job.tenant_id, job.batch_id, link_text, prompt_tokens, max_tokens
                    )
                    if hold.refused is not None:
                        route.append({"link": link_text, "skipped": "budget_exceeded"})
                        return store.Outcome(
                            status=JobStatus.FAILED, error_code="budget_exceeded",
                            error_message=hold.refused.message(), route=route,
                            guardrails=findings,
                        )  # fmt: skip
                with hooks.stage("provider.call", link=link_text):
                    completion, error = self._attempt(
                        job, owner, provider, link_text, request, hold
                    )
                if completion is not None:
                    # Unsafe output is blocked first; then a cut-off answer is retried or
                    # failed; then the JSON the job asked for is checked
                    # (llmq/execution/output_review.py).
                    checked = self._check_output(completion, output_guards)
                    verdict = checked.blocked_by
                    # An empty answer is worth another call; any other output rule (built in
                    # or a plugin) blocks the job.
                    unsafe = verdict is not None and verdict != "empty_output"
                    step: output_review.Step | None = (
                        None if unsafe else review.truncation(completion, request)
                    )
                    if step is None and verdict is None:
                        step = review.format(checked.text, request)
                    if isinstance(step, output_review.Retry):
                        route.append({"link": link_text, "result": step.reason, "retry": True})
                        findings.append(
                            {"rule": step.reason, "action": "retry", "count": 1, "stage": "output"}
                        )
                        request = step.request
                        continue
                    if isinstance(step, output_review.Fail):
                        route.append({"link": link_text, "result": step.code})
                        return store.Outcome(
                            status=JobStatus.FAILED, error_code=step.code,
                            error_message=step.message, provider=link.provider,
                            model=link.model, route=route, guardrails=findings,
                        )  # fmt: skip
                    if verdict is None:
                        answered: dict[str, Any] = {"link": link_text, "result": "ok"}
                        if completion.finish_reason == "length":  # an accepted truncation
                            answered["finish_reason"] = "length"
                        route.append(answered)
                        findings.extend(output_findings(checked))
                        return store.Outcome(
                            status=JobStatus.SUCCEEDED,
                            result=step.text if step is not None else checked.text,
                            provider=link.provider,
                            model=link.model,
                            route=route,
                            guardrails=findings,
                        )
                    if unsafe:
                        assert verdict is not None
                        hooks.blocked("output", verdict)
                        route.append({"link": link_text, "result": verdict})
                        findings.extend(output_findings(checked))
                        return store.Outcome(
                            status=JobStatus.BLOCKED,
                            error_code="output_blocked",
                            error_message=f"output blocked by guardrail rule {verdict}",
                            provider=link.provider,
                            model=link.model,
                            route=route,
                            guardrails=findings,
                        )
                    error = ProviderError(verdict, f"output rejected: {verdict}", retryable=True)
                assert error is not None
                tries += 1
                if not error.retryable or tries >= policy.max_attempts:
                    route.append({"link": link_text, "result": error.code, "tries": tries})
                    failure_codes.append(error.code)
                    break
                delay = policy.delay(tries - 1, self._rng, error.retry_after_s)
                hooks.retry(link_text, error.code)
                if policy.should_defer(delay):
                    route.append({"link": link_text, "result": error.code, "deferred_s": delay})
                    return Deferred(delay, route)
                self._sleep(delay)

        if set(failure_codes) == {"circuit_open"} and self.breaker is not None:
            # Nothing was tried: every usable link is cooling down. Wait for the first probe
            # rather than fail a job that a minute from now would succeed.
            wait = min(self.breaker.reopens_in(r["link"]) for r in route if "skipped" in r
                       and r["skipped"] == "circuit_open")  # fmt: skip
            if time.monotonic() + wait < deadline:
                return Deferred(max(wait, 0.5), route)
        if not failure_codes:
            code, message = "no_provider_available", "no link of the chain is configured"
        elif set(failure_codes) == {"context_too_long"}:
            code, message = "context_too_long", "the input does not fit any model of the chain"
        else:
            code = "all_providers_failed"
            message = "every link failed: " + ", ".join(
                f"{r['link']} ({r.get('result') or r.get('skipped')})" for r in route
            )
        return store.Outcome(
            status=JobStatus.FAILED,
            error_code=code,
            error_message=message,
            route=route,
            guardrails=findings,
        )

    def _attempt(
        self,
        job: store.ClaimedJob,
        owner: str,
        provider: Provider,
        link_text: str,
        request: CompletionRequest,
        hold: Hold | None = None,
    ) -> tuple[Completion | None, ProviderError | None]:
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
        recorded = None
        try:
            recorded = self._write(
                functools.partial(
                    store.record_attempt, self.engine, job.id, owner, self.config.lease_s,
                    record,
                )
            )  # fmt: skip
        except store.UNAVAILABLE:
            # Paid for, and Postgres still refuses: the next delivery records it (paid.py).
            if self.paid is not None:
                self.paid.park(job.id, record)
            raise
        finally:
            hooks.attempt(job, link_text, record, recorded.attempt_no if recorded else None)
            if hold is not None and self.budgets is not None:
                self.budgets.settle(hold, cost)
        if completion is None and recorded is not None and recorded.cancel_requested:
            raise JobCancelled  # a result in hand is still returned; a retry is not started
        if completion is not None and completion.finish_reason == "refusal":
            return None, ProviderError("refusal", "the model refused", retryable=False)
        return completion, error

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


def output_findings(checked: ChainResult) -> list[dict[str, Any]]:
    return [{**asdict(f), "stage": "output"} for f in checked.findings]


def expired_outcome(route: list[dict[str, Any]] | None = None) -> store.Outcome:
    return store.Outcome(
        status=JobStatus.EXPIRED,
        error_code="expired",
        error_message="the batch completion window closed before the job finished",
        route=route,
    )

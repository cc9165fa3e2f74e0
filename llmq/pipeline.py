"""One job, start to finish: claim -> input guardrails -> cache -> provider chain ->
output guardrails -> record. Plain Python: the Celery task is a thin wrapper around `run`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from llmq import repository
from llmq.budgets import BudgetGuard, Hold
from llmq.cache import CachedResult, ResultCache, cache_key
from llmq.circuit import CircuitBreaker
from llmq.db.models import JobStatus
from llmq.guardrails import Guardrail, build_chain, run_chain
from llmq.pricing import PriceTable
from llmq.providers.base import Completion, CompletionRequest, Provider, ProviderError
from llmq.providers.registry import parse_link
from llmq.ratelimit import RateLimiter
from llmq.retry import RetryPolicy
from llmq.templates import Rendered, TemplateError, get_template
from llmq.tokens import estimate_tokens

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Deferred:
    delay_s: float
    route: list[dict[str, Any]]


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
        budgets: BudgetGuard | None = None,
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
        self._input_guards: list[Guardrail] = build_chain(
            config.input_guardrails, banned_terms=config.banned_terms
        )
        self._output_guards: list[Guardrail] = build_chain(config.output_guardrails)

    # -----------------------------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """Process one job message. Returns what happened (for logs); never raises for job
        errors. Infrastructure errors (Postgres down) propagate: the lease then expires and the
        reconciler re-queues the job."""
        owner = uuid.uuid4().hex
        job = repository.claim_job(self.engine, job_id, owner, self.config.lease_s)
        if job is None:
            return "not_claimable"  # finished, cancelled, or running under a live lease
        if job.deliveries > self.config.max_deliveries:
            outcome = repository.Outcome(
                status=JobStatus.FAILED,
                error_code="worker_lost",
                error_message=f"the job was interrupted {job.deliveries - 1} times",
            )
            repository.finish_job(self.engine, job.id, owner, outcome)
            return outcome.status
        hold = (
            self.leases.hold(job.id, owner) if self.leases is not None else contextlib.nullcontext()
        )
        with hold:
            try:
                result = self._process(job, owner)
            except OperationalError:
                raise
            except Exception as exc:  # a bug must end the job, not loop it through redelivery
                log.exception("job %s failed with an internal error", job.id)
                result = repository.Outcome(
                    status=JobStatus.FAILED,
                    error_code="internal_error",
                    error_message=f"{type(exc).__name__} in the pipeline",
                )
            if isinstance(result, Deferred):
                repository.defer_job(self.engine, job.id, owner, result.delay_s, result.route)
                return "deferred"
            repository.finish_job(self.engine, job.id, owner, result)
            return result.status

    # -----------------------------------------------------------------------------------------

    def _process(self, job: repository.ClaimedJob, owner: str) -> repository.Outcome | Deferred:
        try:
            template = get_template(job.template)
        except TemplateError as exc:
            return repository.Outcome(
                status=JobStatus.FAILED, error_code="bad_template", error_message=str(exc)
            )

        try:
            guarded = run_chain(self._input_guards, job.input)
        except Exception:
            log.exception("input guardrail crashed on job %s", job.id)
            return repository.Outcome(
                status=JobStatus.FAILED,
                error_code="guardrail_error",
                error_message="an input guardrail failed; the job was stopped (fail closed)",
            )
        findings = [asdict(f) for f in guarded.findings]
        if guarded.blocked_by:
            return repository.Outcome(
                status=JobStatus.BLOCKED,
                error_code="input_blocked",
                error_message=f"input blocked by guardrail rule {guarded.blocked_by}",
                guardrails=findings,
            )

        try:
            rendered = template.render(guarded.text, job.params)
        except TemplateError as exc:
            return repository.Outcome(
                status=JobStatus.FAILED,
                error_code="bad_template",
                error_message=str(exc),
                guardrails=findings,
            )

        key = cache_key(job.chain, template.name, template.version, asdict(rendered), job.params)
        if self.cache is not None and not job.params.get("no_cache"):
            hit = self.cache.get(key)
            if hit is not None:
                return repository.Outcome(
                    status=JobStatus.SUCCEEDED,
                    result=hit.text,
                    provider=hit.provider,
                    model=hit.model,
                    cache_hit=True,
                    guardrails=findings,
                )

        outcome = self._run_chain(job, owner, rendered, findings)
        if (
            isinstance(outcome, repository.Outcome)
            and outcome.status == JobStatus.SUCCEEDED
            and self.cache is not None
            and outcome.result is not None
        ):
            self.cache.put(
                key,
                CachedResult(outcome.result, outcome.provider or "", outcome.model or ""),
            )
        return outcome

    def _run_chain(
        self,
        job: repository.ClaimedJob,
        owner: str,
        rendered: Rendered,
        findings: list[dict[str, Any]],
    ) -> repository.Outcome | Deferred:
        policy = self.config.retry
        max_tokens = int(job.params.get("max_tokens") or self.config.max_output_tokens)
        prompt_tokens = estimate_tokens(rendered.user) + estimate_tokens(rendered.system or "")
        # A job resumed after a long backoff continues where it stopped, attempts included.
        failures_before: Counter[str] = Counter()
        if job.attempts_made:
            for a in repository.prior_attempts(self.engine, job.id):
                if a["outcome"] != "ok":
                    failures_before[f"{a['provider']}:{a['model']}"] += 1

        route: list[dict[str, Any]] = []
        failure_codes: list[str] = []
        deadline = time.monotonic() + self.config.deadline_s - job.age_s
        for link_text in job.chain:
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
            request = CompletionRequest(
                model=link.model,
                user=rendered.user,
                system=rendered.system,
                max_tokens=max_tokens,
                temperature=job.params.get("temperature"),
                document=rendered.document,
                style=rendered.style,
            )
            while True:
                if time.monotonic() >= deadline:
                    route.append({"link": link_text, "skipped": "deadline_exceeded"})
                    return repository.Outcome(
                        status=JobStatus.FAILED, error_code="deadline_exceeded",
                        error_message=f"the job ran out of its {self.config.deadline_s:g} s "
                        "deadline", route=route, guardrails=findings,
                    )  # fmt: skip
                if self.limiter is not None:
                    wait = self.limiter.acquire(link_text, prompt_tokens + max_tokens)
                    if wait > 0:
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
                        return repository.Outcome(
                            status=JobStatus.FAILED, error_code="budget_exceeded",
                            error_message=hold.refused.message(), route=route,
                            guardrails=findings,
                        )  # fmt: skip
                completion, error = self._attempt(job, owner, provider, link_text, request, hold)
                if completion is not None:
                    verdict = self._check_output(completion)
                    if verdict is None:
                        route.append({"link": link_text, "result": "ok"})
                        return repository.Outcome(
                            status=JobStatus.SUCCEEDED,
                            result=completion.text,
                            provider=link.provider,
                            model=link.model,
                            route=route,
                            guardrails=findings,
                        )
                    if verdict.startswith("unsafe_output"):
                        route.append({"link": link_text, "result": verdict})
                        return repository.Outcome(
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
                if policy.should_defer(delay):
                    route.append({"link": link_text, "result": error.code, "deferred_s": delay})
                    return Deferred(delay, route)
                self._sleep(delay)

        if not failure_codes:
            code, message = "no_provider_available", "no link of the chain is configured"
        elif set(failure_codes) == {"context_too_long"}:
            code, message = "context_too_long", "the input does not fit any model of the chain"
        else:
            code = "all_providers_failed"
            message = "every link failed: " + ", ".join(
                f"{r['link']} ({r.get('result') or r.get('skipped')})" for r in route
            )
        return repository.Outcome(
            status=JobStatus.FAILED,
            error_code=code,
            error_message=message,
            route=route,
            guardrails=findings,
        )

    def _attempt(
        self,
        job: repository.ClaimedJob,
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
        repository.record_attempt(
            self.engine,
            job.id,
            owner,
            self.config.lease_s,
            repository.AttemptRecord(
                provider=link_text.split(":", 1)[0],
                model=request.model,
                outcome="ok" if completion is not None else error.code if error else "error",
                latency_ms=round(latency_ms, 3),
                http_status=completion.http_status
                if completion
                else error.status
                if error
                else None,
                error_code=error.code if error else None,
                error_message=error.message[:500] if error else None,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
                cost_usd=cost,
                worker=self.worker_name,
            ),
        )
        if hold is not None and self.budgets is not None:
            self.budgets.settle(hold, cost)
        if completion is not None and completion.finish_reason == "refusal":
            return None, ProviderError("refusal", "the model refused", retryable=False)
        return completion, error

    def _check_output(self, completion: Completion) -> str | None:
        """The rule that rejected the output, or None when it may be returned."""
        try:
            verdict = run_chain(self._output_guards, completion.text)
        except Exception:
            log.exception("output guardrail crashed")
            return "unsafe_output.guardrail_error"  # fail closed
        return verdict.blocked_by

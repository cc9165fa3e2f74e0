"""What the pipeline's steps return, and the state of one job's walk down its provider chain
(llmq/execution/pipeline.py): a final `Outcome` (llmq/store), a `Deferred` hand-back, or, from
one link of the chain, `NextLink`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmq import store
from llmq.errors import JobErrorCode
from llmq.execution import output_review
from llmq.execution.cache import CachedResult
from llmq.guardrails import ChainResult, Guardrail
from llmq.providers.base import CompletionRequest
from llmq.store.models import JobStatus
from llmq.templates import Rendered

CANCELLED = store.Outcome(
    status=JobStatus.CANCELLED,
    error_code=JobErrorCode.CANCELLED,
    error_message="cancelled by the client",
)


@dataclass(frozen=True)
class Deferred:
    """Give the job back to wait `delay_s` (a long backoff, the rate limit, an identical job
    in flight) without holding a worker slot."""

    delay_s: float
    route: list[dict[str, Any]]
    shown_as: str = JobStatus.RETRYING  # or QUEUED: waiting for an identical job (dedup.py)
    then: Callable[[], None] | None = None  # run once the hand-back is written


@dataclass(frozen=True)
class NextLink:
    """A link gave up (skipped, or failed for good; its route entry is written): the chain
    goes on. `failure`: what it counts as if the whole chain fails (None: not a failure)."""

    failure: str | None = None


@dataclass
class ChainRun:
    """One job's walk down its chain: what every link needs, and the route so far."""

    job: store.ClaimedJob
    owner: str
    rendered: Rendered
    findings: list[dict[str, Any]]
    output_guards: list[Guardrail]
    spec: output_review.OutputSpec
    review: output_review.OutputReview
    max_tokens: int
    prompt_tokens: int
    deadline: float  # time.monotonic() when the job's deadline passes
    window_ends: float | None  # time.monotonic() when the batch's completion window closes
    route: list[dict[str, Any]] = field(default_factory=list)

    def request(self, model: str) -> CompletionRequest:
        plain = CompletionRequest(
            model=model, user=self.rendered.user, system=self.rendered.system,
            max_tokens=self.max_tokens, temperature=self.job.params.get("temperature"),
            document=self.rendered.document, style=self.rendered.style,
            messages=self.rendered.messages,
        )  # fmt: skip
        return output_review.prepare(plain, self.spec)

    def skip(self, link_text: str, reason: str, failure: str | None = None) -> NextLink:
        self.route.append({"link": link_text, "skipped": reason})
        return NextLink(failure)

    def failed(self, code: JobErrorCode, message: str) -> store.Outcome:
        return store.Outcome(
            status=JobStatus.FAILED, error_code=code, error_message=message,
            route=self.route, guardrails=self.findings,
        )  # fmt: skip


def from_cache(
    hit: CachedResult, route: list[dict[str, Any]], findings: list[dict[str, Any]]
) -> store.Outcome:
    return store.Outcome(
        status=JobStatus.SUCCEEDED, result=hit.text, provider=hit.provider, model=hit.model,
        cache_hit=True, route=route, guardrails=findings,
    )  # fmt: skip


def output_findings(checked: ChainResult) -> list[dict[str, Any]]:
    return [{**asdict(f), "stage": "output"} for f in checked.findings]


def expired_outcome(route: list[dict[str, Any]] | None = None) -> store.Outcome:
    return store.Outcome(
        status=JobStatus.EXPIRED,
        error_code=JobErrorCode.EXPIRED,
        error_message="the batch completion window closed before the job finished",
        route=route,
    )

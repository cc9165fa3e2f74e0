"""The provider Batch lane: queued jobs of `lane = 'provider_batch'` go to the providers' own
Batch APIs (half the price, answers within a day) instead of one synchronous call each.

One `tick` does, in order:
1. intents left by a crash between an upload and recording its upstream id: found upstream by
   the intent (BatchClient.find) and recorded, or uploaded now; never a second upstream batch;
2. uploads whose every job was cancelled: their upstream batch is cancelled;
3. uploads due for a poll: polled; once ended, every item's answer is recorded at the batch
   price, reviewed like a sync answer and the job finished, exactly once, through the same
   claim / record_attempt / finish_job path as the sync lane; errored and expired items, and
   every job of a failed batch, go to the sync lane (their normal retry and fallback);
4. waiting jobs, grouped per provider:model: uploaded once a group is big or old enough, after
   the same input guardrails and redaction as a sync call (Pipeline.lane_prepare).

Plain Python over the record of truth: llmq/workers/lane.py runs it in a thread of every worker,
one tick at a time across the fleet (a Postgres advisory lock); nothing blocks a task thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Engine

from llmq import store
from llmq.cost.budgets import BudgetGuard, Hold
from llmq.cost.pricing import PriceTable
from llmq.errors import JobErrorCode
from llmq.execution import lane_rules
from llmq.execution.outcomes import CANCELLED
from llmq.execution.pipeline import LaneItem, Pipeline
from llmq.providers.base import Completion, ProviderError, Usage
from llmq.providers.batch_api import (
    MAX_BYTES,
    MAX_ITEMS,
    BatchApiUnavailable,
    BatchClient,
    BatchLookupPending,
    BatchRequest,
    ItemResult,
)
from llmq.settings import Settings
from llmq.store.models import JobStatus
from llmq.telemetry import hooks

log = logging.getLogger(__name__)

# Waiting jobs without a batch link handed to the sync lane per tick; more wait for the next.
SCAN_LIMIT = 50_000
BATCH_PROVIDERS = frozenset(MAX_ITEMS)
# The attempts of a lane call name the upstream batch as their worker: a job re-collected after
# a crash finds its answer recorded and is not recorded (or paid) twice.
WORKER_PREFIX = "provider_batch:"
# How long a budget reservation made at upload lasts: most upstream batches end within an hour.
# A longer one ends early and costs only that the spend shows once the answer is recorded; one
# a crash leaves unsettled expires by then.
BUDGET_HOLD_S = 7200


@dataclass
class TickReport:
    uploaded: int = 0  # upstream batches created
    recovered: int = 0  # intents found upstream after a crash
    polled: int = 0
    finished: int = 0  # jobs ended by the lane
    # Jobs handed to the sync lane: the reconciler publishes them (llmq/workers/reconciler.py).
    to_sync: list[str] = field(default_factory=list)
    cancelled_upstream: int = 0


class LaneRunner:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        pipeline: Pipeline,
        client_for: Callable[[str], BatchClient],
        *,
        after_submit: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.pipeline = pipeline
        self.client_for = client_for
        self.batch_prices: PriceTable = pipeline.prices.batch()
        # The sync lane's budget guard, estimating at the batch price: the same limits and
        # Redis keys, reserved at upload and settled when the answer comes back.
        sync = pipeline.budgets
        self.budgets = (
            None
            if sync is None
            else BudgetGuard(
                sync.engine, sync.redis, self.batch_prices, reconcile_s=sync.reconcile_s,
                hold_ttl_s=BUDGET_HOLD_S, limits_cache_s=sync.limits_cache_s,
                soft_fraction=sync.soft_fraction,
            )
        )  # fmt: skip
        self._holds: dict[str, Hold] = {}
        # Test hook: runs between the upload and recording its id (a crash there is recovered).
        self._after_submit = after_submit
        self._owner = f"lane-{uuid.uuid4().hex[:12]}"

    def tick(self) -> TickReport:
        report = TickReport()
        for row in store.open_provider_batches(self.engine):
            try:
                if row.state == "intent":
                    self._recover(row, report)
                else:
                    self._poll(row, report)
            except ProviderError as exc:  # the provider down or slow: ask again, backing off
                log.warning("provider batch %s (%s): %s", row.id, row.upstream_id, exc.message)
                if row.state != "intent":
                    store.record_poll(self.engine, row.id, None, self._next_poll_s(row))
            except Exception:  # one upstream's trouble must not stall the others
                log.exception("provider batch %s (%s)", row.id, row.upstream_id)
        for row in store.uploads_to_cancel(self.engine):
            if store.mark_cancel_requested(self.engine, row.id) and row.upstream_id:
                try:
                    self.client_for(row.provider).cancel(row.upstream_id)
                    report.cancelled_upstream += 1
                except ProviderError as exc:  # e.g. it ended meanwhile: its results still come
                    log.warning("cancelling %s failed: %s", row.upstream_id, exc.message)
        self._gather(report)
        return report

    # --- 4. gathering and uploading ---------------------------------------------------------

    def _usable(self) -> frozenset[str]:
        """The providers whose Batch API this process can reach (a key is configured)."""
        usable = set()
        for provider in BATCH_PROVIDERS:
            try:
                self.client_for(provider)
            except BatchApiUnavailable:
                continue
            usable.add(provider)
        return frozenset(usable)

    def _gather(self, report: TickReport) -> None:
        waiting = store.waiting_lane_chains(self.engine)
        usable = self._usable()
        groups, no_link = lane_rules.group_waiting(
            [(w.chain, w.jobs, w.oldest_age_s) for w in waiting], usable
        )
        if no_link:
            ids = store.waiting_lane_ids(self.engine, no_link, SCAN_LIMIT)
            report.to_sync += store.to_sync_lane(self.engine, ids)
        for group in groups.values():
            provider = group.link.split(":", 1)[0]
            max_items = min(self.settings.batch_lane_max_items, MAX_ITEMS[provider])
            if lane_rules.is_due(group, max_items, self.settings.batch_lane_max_age_s):
                # One full upload per tick and link at most; the rest waits for the next.
                ids = store.waiting_lane_ids(self.engine, group.chains, max_items)
                self._upload_jobs(ids, report)

    def _upload_jobs(self, job_ids: Sequence[str], report: TickReport) -> None:
        by_link = self._prepared(store.lane_jobs(self.engine, job_ids), report)
        for link, items in by_link.items():
            provider, model = link.split(":", 1)
            client = self.client_for(provider)
            max_items = min(self.settings.batch_lane_max_items, MAX_ITEMS[provider])
            requests = [
                self._request(item, model) for item in items if self._reserve(item, link, report)
            ]
            for chunk in lane_rules.cut(
                requests, client.request_size, max_items, MAX_BYTES[provider]
            ):
                intent = uuid.uuid4()
                tied = set(
                    store.open_intent(
                        self.engine, intent, provider, model, [r.custom_id for r in chunk]
                    )
                )
                for request in chunk:  # ended meanwhile (cancelled, over budget): not sent
                    if request.custom_id not in tied:
                        self._settle(request.custom_id, Decimal(0))
                if tied and self._submit(client, intent, [r for r in chunk if r.custom_id in tied]):
                    report.uploaded += 1

    def _prepared(
        self, jobs: Iterable[store.ClaimedJob], report: TickReport
    ) -> dict[str, list[LaneItem]]:
        usable = self._usable()
        """Jobs guarded and rendered, per upstream link. A job the guard stops ends here (as a
        sync job would); one the lane cannot carry goes to the sync lane."""
        by_link: dict[str, list[LaneItem]] = {}
        not_for_lane: list[str] = []
        for job in jobs:
            prepared = self.pipeline.lane_prepare(job)
            if isinstance(prepared, store.Outcome):
                self._end(job, prepared, report)
                continue
            link = (
                None if prepared is None else lane_rules.batch_link(prepared.choice.links, usable)
            )
            if prepared is None or link is None:
                not_for_lane.append(str(job.id))
                continue
            by_link.setdefault(link, []).append(prepared)
        report.to_sync += store.to_sync_lane(self.engine, not_for_lane)
        return by_link

    def _reserve(self, item: LaneItem, link: str, report: TickReport) -> bool:
        """The job's estimate at the batch price held against its budgets, as the sync lane
        holds each call's; a job the budgets cannot cover ends budget_exceeded, never sent."""
        if self.budgets is None:
            return True
        run = self.pipeline.lane_run(item, self._owner)
        job = item.job
        hold = self.budgets.reserve(
            job.tenant_id, job.batch_id, link, run.prompt_tokens, run.max_tokens
        )
        if hold.refused is None:
            self._holds[str(job.id)] = hold
            return True
        run.route.append({"link": link, "skipped": "budget_exceeded"})
        self._end(job, run.failed(JobErrorCode.BUDGET_EXCEEDED, hold.refused.message()), report)
        return False

    def _end(self, job: store.ClaimedJob, outcome: store.Outcome, report: TickReport) -> None:
        """End a waiting lane job that never goes upstream, as a sync job ends: claimed, then
        finished through the same conditional UPDATE (a job ended meanwhile stays as it is)."""
        claimed = self.pipeline.jobs.claim_job(str(job.id), self._owner, self.settings.job_lease_s)
        if claimed is not None:
            self._finish(claimed, outcome, report)

    def _finish(self, job: store.ClaimedJob, outcome: store.Outcome, report: TickReport) -> None:
        """The same conditional UPDATE as a sync job's end, the same live event, and the same
        shadow run and evaluation row (written in the finishing transaction)."""
        shadows = self.pipeline.shadows
        if shadows is not None:
            outcome = shadows.attach(job, outcome)
        if self.pipeline.jobs.finish_job(job.id, self._owner, outcome):
            report.finished += 1
            if self.pipeline.events is not None:
                self.pipeline.events.job_changed(job.id, job.batch_id, outcome.status)
            if shadows is not None:
                shadows.publish(outcome)

    def _settle(self, job_id: str, cost: Decimal | None) -> None:
        hold = self._holds.pop(job_id, None)
        if hold is not None and self.budgets is not None:
            self.budgets.settle(hold, cost)

    def _request(self, item: LaneItem, model: str) -> BatchRequest:
        """The upload line of a job: the request a sync call would send (same rendering, same
        JSON instructions), as messages."""
        run = self.pipeline.lane_run(item, self._owner)
        request = run.request(model)
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(request.messages or [{"role": "user", "content": request.user}])
        return BatchRequest(
            custom_id=str(item.job.id),
            model=model,
            messages=messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )

    def _submit(self, client: BatchClient, intent: uuid.UUID, requests: list[BatchRequest]) -> bool:
        # The intent row is committed before this call: a crash from here on is recovered.
        try:
            upstream_id = client.submit(requests, intent_id=str(intent))
        except ProviderError as exc:
            if exc.retryable:  # it may have been created all the same: recovery finds out
                log.warning("upload %s failed (%s); the next tick looks again", intent, exc.code)
                return False
            # Refused for good (a 4xx): the jobs run on the sync lane, where their chain's
            # normal retry and fallback apply.
            log.warning("upload %s refused: %s", intent, exc.message)
            store.end_provider_batch(self.engine, intent, "failed", exc.message[:500])
            for request in requests:
                self._settle(request.custom_id, Decimal(0))
            store.to_sync_lane(self.engine, [r.custom_id for r in requests])
            return False
        if self._after_submit is not None:
            self._after_submit()
        store.record_upload(self.engine, intent, upstream_id, self.settings.batch_lane_poll_s)
        log.info("uploaded %d jobs as %s batch %s", len(requests), client.provider, upstream_id)
        return True

    # --- 1. recovery -------------------------------------------------------------------------

    def _recover(self, row: store.ProviderBatchRow, report: TickReport) -> None:
        """An intent whose upload may or may not have happened (this tick holds the lane's
        lock, so its writer is gone): find it upstream, else upload it now."""
        job_ids = store.intent_job_ids(self.engine, row.id)
        if not job_ids:
            store.end_provider_batch(self.engine, row.id, "ended", "no job left to upload")
            return
        client = self.client_for(row.provider)
        known = store.known_upstream_ids(self.engine, row.provider)
        try:
            found = client.find(
                str(row.id), store.intent_job_ids(self.engine, row.id, live=False),
                known_ids=known,
            )  # fmt: skip
        except BatchLookupPending as exc:  # cannot tell yet: uploading again could pay twice
            log.info("upload %s: %s", row.id, exc)
            return
        if found is not None:
            store.record_upload(self.engine, row.id, found, self.settings.batch_lane_poll_s)
            report.recovered += 1
            log.info("recovered upload %s as %s batch %s", row.id, row.provider, found)
            return
        link = f"{row.provider}:{row.model}"
        items = self._prepared(store.lane_jobs(self.engine, job_ids), report).get(link, [])
        if not items:
            store.end_provider_batch(self.engine, row.id, "ended", "no job left to upload")
            return
        if self._submit(client, row.id, [self._request(item, row.model) for item in items]):
            report.uploaded += 1

    # --- 3. polling and collecting -----------------------------------------------------------

    def _next_poll_s(self, row: store.ProviderBatchRow) -> float:
        return lane_rules.poll_delay(
            row.polls, self.settings.batch_lane_poll_s, self.settings.batch_lane_poll_max_s
        )

    def _poll(self, row: store.ProviderBatchRow, report: TickReport) -> None:
        assert row.upstream_id is not None
        client = self.client_for(row.provider)
        upstream = client.retrieve(row.upstream_id)
        report.polled += 1
        if upstream.state in ("in_progress", "cancelling"):
            store.record_poll(self.engine, row.id, upstream.raw_status, self._next_poll_s(row))
            return
        store.record_poll(self.engine, row.id, upstream.raw_status, 0.0)
        waiting = store.intent_job_ids(self.engine, row.id)
        results: dict[str, ItemResult] = {}
        if upstream.state != "failed":
            results = {r.custom_id: r for r in client.results(row.upstream_id, custom_ids=waiting)}
        reason = upstream.error or f"the {row.provider} batch {upstream.raw_status}"
        for job_id in waiting:
            self._collect(row, job_id, results.get(job_id), reason, report)
        if not store.intent_job_ids(self.engine, row.id):
            state = "failed" if upstream.state == "failed" else "ended"
            store.end_provider_batch(self.engine, row.id, state, upstream.error)
        else:  # some held by a lease (a lane runner that died mid-collect): look again later
            store.record_poll(
                self.engine, row.id, upstream.raw_status, self.settings.batch_lane_poll_s
            )

    def _collect(
        self,
        row: store.ProviderBatchRow,
        job_id: str,
        result: ItemResult | None,
        reason: str,
        report: TickReport,
    ) -> None:
        """One job's upstream answer (None: none came back), recorded and the job ended or
        handed to the sync lane. A job held by a live lease is left for a later tick."""
        jobs, lease_s = self.pipeline.jobs, self.settings.job_lease_s
        job = jobs.claim_job(job_id, self._owner, lease_s)
        if job is None:
            return
        link = f"{row.provider}:{row.model}"
        marker = f"{WORKER_PREFIX}{row.upstream_id}"
        recorded = any(a.get("worker") == marker for a in jobs.prior_attempts(job.id))
        if result is not None and result.outcome == "succeeded" and result.text is not None:
            if not recorded:
                attempt = self._attempt(row, result, marker, link)
                if jobs.record_attempt(job.id, self._owner, lease_s, attempt) is not None:
                    hooks.usage(job, link, attempt)
                self._settle(job_id, attempt.cost_usd)
            outcome = self._reviewed(job, link, result)
            if outcome is not None:
                self._finish(job, outcome, report)
                return
            route = [{"link": link, "result": "batch_answer_rejected", "upstream": row.upstream_id}]
        else:
            why = result.error if result is not None and result.error else reason
            kind = result.outcome if result is not None else "missing"
            if not recorded:
                jobs.record_attempt(
                    job.id, self._owner, lease_s,
                    store.AttemptRecord(
                        provider=row.provider, model=row.model, outcome=f"batch_{kind}",
                        latency_ms=0.0, error_code=f"batch_{kind}", error_message=why[:500],
                        cost_usd=Decimal(0), worker=marker,
                    ),
                )  # fmt: skip
            route = [{"link": link, "result": f"batch_{kind}", "upstream": row.upstream_id}]
            self._settle(job_id, Decimal(0))  # not billed: the reservation is released
        if job.cancel_requested:
            self._finish(job, CANCELLED, report)
            return
        handed = store.hand_to_sync(self.engine, job.id, self._owner, route)
        if handed:
            report.to_sync.append(job_id)

    def _attempt(
        self, row: store.ProviderBatchRow, result: ItemResult, marker: str, link: str
    ) -> store.AttemptRecord:
        """The answer as an attempt: the usage the provider reported, at the batch price."""
        tokens = (result.input_tokens, result.output_tokens, result.cached_tokens)
        return store.AttemptRecord(
            provider=row.provider, model=row.model, outcome="ok", latency_ms=0.0,
            input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            cached_tokens=result.cached_tokens,
            cost_usd=self.batch_prices.cost(link, *tokens),
            sync_cost_usd=self.pipeline.prices.cost(link, *tokens), worker=marker,
            # Kept for recovery only when complete, as a sync call's answer.
            output=result.text if result.finish_reason == "stop" else None,
        )  # fmt: skip

    def _reviewed(
        self, job: store.ClaimedJob, link: str, result: ItemResult
    ) -> store.Outcome | None:
        """The answer through the same output guardrails and review as a sync answer; None
        when the sync lane must take over (or the job cannot be prepared again)."""
        prepared = self.pipeline.lane_prepare(job)
        if not isinstance(prepared, LaneItem):
            return prepared
        assert result.text is not None
        completion = Completion(
            text=result.text,
            usage=Usage(result.input_tokens, result.output_tokens, result.cached_tokens),
            finish_reason=result.finish_reason,
        )
        run = self.pipeline.lane_run(prepared, self._owner)
        outcome = self.pipeline.lane_review(run, link, completion, prepared)
        if outcome is not None and outcome.status == JobStatus.SUCCEEDED:
            upstream = {"lane": "provider_batch"}
            route = [*(outcome.route or [])]
            route[-1:] = [{**route[-1], **upstream}] if route else [upstream]
            return store.Outcome(**{**outcome.__dict__, "route": route})
        return outcome

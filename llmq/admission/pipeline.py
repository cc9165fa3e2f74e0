"""The whole path of a submission, in order, before and up to its publication:

1. template: the pinned or default version; the params must suit every version it may run as
2. the caller's items-per-minute limit (only for what would be written)
3. chain, each item's template version (A/B) and its short-input route
4. cost estimate against the tenant's budget
5. webhook (batches): signable and deliverable
6. size: a plain prompt over its template's token budget is refused
7. redaction at ingest: personal data never reaches the rows, the broker or a log line
8. write the rows (under the request's Idempotency-Key, if any)
9. publish to the broker (a broker outage leaves the job to the reconciler)

Each refusal is an `AdmissionError` (llmq/admission/errors.py). The stages' order is the API's
contract too: a request that fails two checks gets the earlier stage's error. The compatible
APIs (OpenAI, Anthropic) parse and guard their own formats, then share stages 8 and 9.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from llmq import store
from llmq.compat.common import ChatIngest, TextRedactor
from llmq.guardrails.selection import GuardrailSelection
from llmq.settings import Settings
from llmq.store import Principal

from .budget import enforce_budget
from .guard import chat_ingest, check_prompt_size, redact_jobs, text_redactor
from .publish import Broker, publish_quietly
from .records import AdmissionRecords, Rows
from .resolve import assign_version, resolve_chain, resolve_template, with_short_input_routes
from .shadow import check_shadow
from .webhook import check_webhook

R = TypeVar("R")
# Inserts the rows, under the given idempotency record (None: no Idempotency-Key).
Insert = Callable[[store.Idempotency | None], uuid.UUID]
# Runs an Insert under the request's Idempotency-Key: the new id, or (R) the first answer again.
Once = Callable[[Insert], uuid.UUID | R]


@dataclass(frozen=True)
class Item:
    """One job of a submission. Items that share their params (a batch's defaults) should share
    one dict object: it is then checked, priced, redacted and stored once."""

    input: str
    params: dict[str, Any]
    custom_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """A native job or batch, parsed and validated for shape by the API."""

    template: str
    items: Sequence[Item]
    template_version: int | None = None
    chain: Sequence[str] | None = None
    priority: str = "default"
    metadata: dict[str, Any] = field(default_factory=dict)  # a batch's own
    completion_window_s: int | None = None
    webhook_url: str | None = None
    max_cost_usd: Decimal | None = None
    shadow: dict[str, Any] | None = None  # a batch's shadow spec (llmq/evals/spec.py)
    lane: str = "sync"  # "provider_batch": the providers' Batch APIs (docs/batches.md)


class AdmissionPipeline:
    """Built once per API process. `limit_items(who, n)` raises when the caller may not submit
    `n` more items now (llmq/api/key_limits.py)."""

    def __init__(
        self,
        settings: Settings,
        guards: GuardrailSelection,
        records: AdmissionRecords,
        broker: Broker,
        limit_items: Callable[[Principal, int], None],
    ) -> None:
        self.settings = settings
        self.guards = guards
        self.records = records
        self.broker = broker
        self.limit_items = limit_items
        # The compatible APIs' stage 6 and 7 on a conversation / a file's strings.
        self.chat_ingest: ChatIngest = chat_ingest(guards, settings)
        self.text_redactor: TextRedactor | None = text_redactor(guards, settings)

    def admit_job(
        self, submission: Submission, who: Principal, once: Once[R] | None = None
    ) -> uuid.UUID | R:
        """The job's id, or the first answer to this Idempotency-Key (whatever `once` returns)."""
        rows = self._prepare(submission, who, "body.input")
        outcome = self._write(lambda idem: self.records.insert_job(rows, idem), once)
        if isinstance(outcome, uuid.UUID):
            self._publish_job(outcome, submission.priority)
        return outcome

    def admit_batch(
        self, submission: Submission, who: Principal, once: Once[R] | None = None
    ) -> uuid.UUID | R:
        """The batch's id, or the first answer to this Idempotency-Key."""
        rows = self._prepare(submission, who, "body.items.{index}.input")
        outcome = self._write(lambda idem: self.records.insert_batch(rows, idem), once)
        if isinstance(outcome, uuid.UUID):
            self._publish_batch(outcome, submission.priority)
        return outcome

    def _prepare(self, submission: Submission, who: Principal, input_loc: str) -> Rows:
        """Stages 1-7: every check, then the rows as they are to be written."""
        settings, items = self.settings, submission.items
        inputs = [item.input for item in items]
        # 1. Template (422 invalid_template): each distinct params object rendered once.
        distinct = {id(item.params): item.params for item in items}.values()
        by_content = {json.dumps(p, sort_keys=True): p for p in distinct}
        template = resolve_template(
            submission.template, list(by_content.values()), submission.template_version, settings
        )
        # 2. The key's items per minute (429).
        self.limit_items(who, len(items))
        # 3. Chain, versions, short-input routes.
        chain = resolve_chain(submission.chain, settings)
        pinned = submission.template_version
        versions = [
            assign_version(template, pinned, who.tenant_id, item.custom_id, item.input, settings)
            for item in items
        ]
        params = with_short_input_routes(
            template, versions, [item.params for item in items],
            explicit_chain=submission.chain is not None, settings=settings,
        )  # fmt: skip
        # 4. Budget (402 budget_exceeded).
        priced = list(zip(inputs, params, strict=True))
        enforce_budget(self.records, settings, who.tenant_id, template, chain, priced)
        # 4b. A batch's shadow spec: its template version must exist (422 invalid_shadow).
        shadow = check_shadow(template.name, submission.shadow)
        # 5. Webhook (422).
        if submission.webhook_url:
            check_webhook(
                submission.webhook_url, settings,
                lambda: self.records.has_webhook_secret(who.tenant_id),
            )  # fmt: skip
        # 6. Size (422 input_too_long).
        check_prompt_size(self.guards, template, inputs, input_loc)
        # 7. Redaction at ingest.
        stored = redact_jobs(self.guards, settings, template, priced)
        jobs = [
            store.NewJob(
                input=job.input,
                custom_id=item.custom_id,
                params=job.params,
                meta=item.metadata,
                guardrails=job.findings,
                template_version=version,
            )
            for item, version, job in zip(items, versions, stored, strict=True)
        ]
        return Rows(
            tenant_id=who.tenant_id,
            api_key_id=who.key_id,
            template=template.name,
            template_version=template.version,
            priority=submission.priority,
            chain=chain,
            jobs=jobs,
            meta=submission.metadata,
            completion_window_s=submission.completion_window_s,
            webhook_url=submission.webhook_url,
            max_cost_usd=submission.max_cost_usd,
            shadow=shadow,
            lane=submission.lane,
        )

    @staticmethod
    def _write(insert: Insert, once: Once[R] | None) -> uuid.UUID | R:
        """Stage 8."""
        return insert(None) if once is None else once(insert)

    # ---------------------------------------------------------------------------------------
    # The compatible APIs: their requests are parsed, sized and redacted by their own formats
    # (llmq/compat, with `chat_ingest` / `text_redactor` above); written and published here.

    def admit_chat(self, job: store.NewJob, who: Principal) -> uuid.UUID:
        """A synchronous chat completion: one `chat` job at high priority on the default chain."""
        rows = Rows(
            tenant_id=who.tenant_id, api_key_id=None, template="chat", template_version=1,
            priority="high", chain=list(self.settings.default_chain), jobs=[job],
        )  # fmt: skip
        job_id = self.records.insert_job(rows, None)
        self._publish_job(job_id, rows.priority)
        return job_id

    def admit_compat_batch(
        self,
        who: Principal,
        record: store.CompatBatchRecord,
        priority: str,
        items: Sequence[store.NewJob],
        rejected: dict[int, tuple[str, str]] | None = None,
    ) -> uuid.UUID:
        """A compatible API's batch on the default chain; its record id. A record that failed
        validation (`record.errors`) has no jobs and is not published."""
        # LLMQ_COMPAT_LANE; high priority never waits for a provider's batch.
        lane = "sync" if priority == "high" else self.settings.compat_lane
        record_id = self.records.insert_compat_batch(
            who.tenant_id, record, list(self.settings.default_chain), priority, items, rejected,
            lane=lane,
        )  # fmt: skip
        if record.errors is None:
            self._publish_batch(record_id, priority)
        return record_id

    # ---------------------------------------------------------------------------------------
    # Stage 9

    def _publish_job(self, job_id: uuid.UUID, priority: str) -> None:
        # The row is inserted as dispatched; if the broker refuses, it is unmarked for the
        # reconciler.
        published = publish_quietly(
            lambda: self.broker.jobs([(str(job_id), priority)]), f"job {job_id}"
        )
        if not published:
            self.records.undo_dispatch([str(job_id)])

    def _publish_batch(self, batch_id: uuid.UUID, priority: str) -> None:
        publish_quietly(lambda: self.broker.batch(str(batch_id), priority), f"batch {batch_id}")

"""What admission reads and writes in the record of truth, as a protocol (`AdmissionRecords`)
with its Postgres implementation (`PostgresRecords`, over `llmq.store`: no SQL of its own).
Tests give the pipeline an in-memory implementation instead."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Engine

from llmq import store
from llmq.cost.budgets import Shortfall, check_submission


@dataclass(frozen=True)
class Rows:
    """A submission as it is written: one `NewJob` per item (already redacted), and what its
    jobs share. The batch-only fields are ignored for a single job."""

    tenant_id: uuid.UUID
    api_key_id: uuid.UUID | None
    template: str
    template_version: int
    priority: str
    chain: list[str]
    jobs: list[store.NewJob]
    meta: dict[str, Any] = field(default_factory=dict)
    completion_window_s: int | None = None
    webhook_url: str | None = None
    max_cost_usd: Decimal | None = None
    shadow: dict[str, Any] | None = None
    lane: str = "sync"  # or "provider_batch" (llmq/execution/lane.py)


class AdmissionRecords(Protocol):
    def has_budget(self, tenant_id: uuid.UUID) -> bool:
        """Does the tenant have a budget at all? (Without one, nothing is estimated.)"""
        ...

    def budget_shortfall(self, tenant_id: uuid.UUID, estimate: Decimal) -> Shortfall | None:
        """The first of the tenant's limits that `estimate` does not fit in, else None."""
        ...

    def has_webhook_secret(self, tenant_id: uuid.UUID) -> bool: ...

    def insert_job(self, rows: Rows, idempotency: store.Idempotency | None) -> uuid.UUID:
        """Insert the one job of `rows`, marked dispatched; may raise IdempotentReplay."""
        ...

    def insert_batch(self, rows: Rows, idempotency: store.Idempotency | None) -> uuid.UUID:
        """Insert the batch and all its jobs in one transaction; may raise IdempotentReplay."""
        ...

    def insert_compat_batch(
        self,
        tenant_id: uuid.UUID,
        record: store.CompatBatchRecord,
        chain: list[str],
        priority: str,
        items: Sequence[store.NewJob],
        rejected: dict[int, tuple[str, str]] | None,
        lane: str = "sync",
    ) -> uuid.UUID:
        """A compatible API's batch (its record and its native batch); returns the record id."""
        ...

    def undo_dispatch(self, job_ids: Sequence[str]) -> None:
        """Unmark jobs the broker refused, so the reconciler publishes them."""
        ...


class PostgresRecords:
    """`AdmissionRecords` on Postgres."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def has_budget(self, tenant_id: uuid.UUID) -> bool:
        return store.get_budget(self._engine, tenant_id) is not None

    def budget_shortfall(self, tenant_id: uuid.UUID, estimate: Decimal) -> Shortfall | None:
        return check_submission(self._engine, tenant_id, estimate)

    def has_webhook_secret(self, tenant_id: uuid.UUID) -> bool:
        return store.get_webhook_salt(self._engine, tenant_id) is not None

    def insert_job(self, rows: Rows, idempotency: store.Idempotency | None) -> uuid.UUID:
        [job] = rows.jobs
        return store.insert_job(
            self._engine,
            tenant_id=rows.tenant_id,
            template=rows.template,
            template_version=rows.template_version,
            priority=rows.priority,
            chain=rows.chain,
            item=job,
            idempotency=idempotency,
            api_key_id=rows.api_key_id,
        )

    def insert_batch(self, rows: Rows, idempotency: store.Idempotency | None) -> uuid.UUID:
        return store.insert_batch(
            self._engine,
            tenant_id=rows.tenant_id,
            template=rows.template,
            template_version=rows.template_version,
            priority=rows.priority,
            chain=rows.chain,
            meta=rows.meta,
            items=rows.jobs,
            completion_window_s=rows.completion_window_s,
            webhook_url=rows.webhook_url,
            idempotency=idempotency,
            api_key_id=rows.api_key_id,
            max_cost_usd=rows.max_cost_usd,
            shadow=rows.shadow,
            lane=rows.lane,
        )

    def insert_compat_batch(
        self,
        tenant_id: uuid.UUID,
        record: store.CompatBatchRecord,
        chain: list[str],
        priority: str,
        items: Sequence[store.NewJob],
        rejected: dict[int, tuple[str, str]] | None,
        lane: str = "sync",
    ) -> uuid.UUID:
        return store.create_compat_batch(
            self._engine, tenant_id=tenant_id, record=record, chain=chain, priority=priority,
            items=items, rejected=rejected, lane=lane,
        )  # fmt: skip

    def undo_dispatch(self, job_ids: Sequence[str]) -> None:
        store.undo_dispatch(self._engine, job_ids)

"""Spending limits: tenant budgets (daily/monthly USD), batch caps, and ending the jobs of a
batch that went over its cap. What was spent is read in llmq/store/usage.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from llmq.store.audit import AuditEvent, append_event
from llmq.store.base import autocommit


@dataclass(frozen=True)
class Budget:
    tenant_id: uuid.UUID
    daily_usd: Decimal | None
    monthly_usd: Decimal | None


def get_budget(engine: Engine, tenant_id: uuid.UUID) -> Budget | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT daily_usd, monthly_usd FROM budgets WHERE tenant_id = :t"),
            {"t": tenant_id},
        ).first()
    if row is None or (row.daily_usd is None and row.monthly_usd is None):
        return None
    return Budget(tenant_id, row.daily_usd, row.monthly_usd)


def set_budget(
    engine: Engine,
    tenant_name: str,
    daily_usd: Decimal | None,
    monthly_usd: Decimal | None,
    *,
    actor: str = "system",
) -> Budget | None:
    """Set (replace) a tenant's limits; None for both removes them. None if no such tenant.
    The `budget.set` audit row commits with the change."""
    with engine.begin() as conn:  # the upsert finds the tenant itself
        tenant_id: uuid.UUID | None = conn.execute(
            text(
                "INSERT INTO budgets (tenant_id, daily_usd, monthly_usd) "
                "SELECT id, :d, :m FROM tenants WHERE name = :n "
                "ON CONFLICT (tenant_id) DO UPDATE SET daily_usd = EXCLUDED.daily_usd, "
                "monthly_usd = EXCLUDED.monthly_usd, updated_at = now() RETURNING tenant_id"
            ),
            {"n": tenant_name, "d": daily_usd, "m": monthly_usd},
        ).scalar_one_or_none()
        if tenant_id is not None:
            details = {"daily_usd": _usd(daily_usd), "monthly_usd": _usd(monthly_usd)}
            append_event(conn, AuditEvent(actor, "budget.set", tenant_id, tenant_name, details))
    if tenant_id is None:
        return None
    return Budget(tenant_id, daily_usd, monthly_usd)


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def list_budgets(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.name AS tenant, b.daily_usd, b.monthly_usd, b.updated_at "
                "FROM budgets b JOIN tenants t ON t.id = b.tenant_id ORDER BY t.name"
            )
        ).mappings()
        return [dict(r) for r in rows]


def batch_cap(engine: Engine, batch_id: uuid.UUID) -> Decimal | None:
    """The batch's max_cost_usd, fixed at submission (None: no cap)."""
    with engine.connect() as conn:
        value: Decimal | None = conn.execute(
            text("SELECT max_cost_usd FROM batches WHERE id = :b"), {"b": batch_id}
        ).scalar_one_or_none()
        return value


def fail_waiting_jobs(engine: Engine, batch_id: uuid.UUID, message: str) -> int:
    """End a batch's jobs that have not started (queued, or waiting out a backoff) as
    `budget_exceeded`. Running jobs stop at their own next budget check. Their queue messages
    become no-ops: the claim only takes queued or retrying jobs."""
    with autocommit(engine) as conn:
        return conn.execute(
            text(
                "UPDATE jobs SET status = 'failed', error_code = 'budget_exceeded', "
                "error_message = :m, finished_at = now(), cost_usd = 0, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE batch_id = :b AND status IN ('queued', 'retrying') "
                # Provider Batch lane jobs already upstream are started (and reserved): their
                # answers are paid for and still recorded when they come back.
                "AND NOT (lane = 'provider_batch' AND provider_batch_id IS NOT NULL)"
            ),
            {"b": batch_id, "m": message},
        ).rowcount

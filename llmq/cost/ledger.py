"""The cost ledger's SQL: spend sums, tenant budgets, batch caps and usage rollups.

Every figure is computed from the `attempts` table (one row per provider call, unique per job
and attempt number), so spend, rollups and job totals all come from the same rows.
Kept apart from llmq/store/jobs.py (the job lifecycle) so each stays small.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Engine, text

GroupBy = Literal["model", "day", "batch", "key"]

# Group expressions over `attempts a JOIN jobs j LEFT JOIN api_keys k`; fixed strings, never
# user input (group_by is validated against this mapping first).
_GROUP_EXPR: dict[str, tuple[str, str]] = {
    "model": ("a.provider || ':' || a.model", "NULL"),
    "day": ("to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "NULL"),
    "batch": ("j.batch_id::text", "NULL"),
    "key": ("j.api_key_id::text", "min(k.prefix)"),
}


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
    engine: Engine, tenant_name: str, daily_usd: Decimal | None, monthly_usd: Decimal | None
) -> Budget | None:
    """Set (replace) a tenant's limits; None for both removes them. None if no such tenant."""
    with engine.begin() as conn:
        tenant_id = conn.execute(
            text("SELECT id FROM tenants WHERE name = :n"), {"n": tenant_name}
        ).scalar_one_or_none()
        if tenant_id is None:
            return None
        conn.execute(
            text(
                "INSERT INTO budgets (tenant_id, daily_usd, monthly_usd) VALUES (:t, :d, :m) "
                "ON CONFLICT (tenant_id) DO UPDATE SET daily_usd = EXCLUDED.daily_usd, "
                "monthly_usd = EXCLUDED.monthly_usd, updated_at = now()"
            ),
            {"t": tenant_id, "d": daily_usd, "m": monthly_usd},
        )
    return Budget(tenant_id, daily_usd, monthly_usd)


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
    with engine.connect() as conn:
        value: Decimal | None = conn.execute(
            text("SELECT max_cost_usd FROM batches WHERE id = :b"), {"b": batch_id}
        ).scalar_one_or_none()
        return value


def tenant_spend(engine: Engine, tenant_id: uuid.UUID, since: datetime) -> Decimal:
    """USD recorded for the tenant's provider calls since `since` (unpriced calls count 0)."""
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT coalesce(sum(cost_usd), 0) FROM attempts "
                "WHERE tenant_id = :t AND created_at >= :since"
            ),
            {"t": tenant_id, "since": since},
        ).scalar_one()
    return Decimal(value)


def batch_spend(engine: Engine, batch_id: uuid.UUID) -> Decimal:
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT coalesce(sum(a.cost_usd), 0) FROM attempts a "
                "JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = :b"
            ),
            {"b": batch_id},
        ).scalar_one()
    return Decimal(value)


def fail_waiting_jobs(engine: Engine, batch_id: uuid.UUID, message: str) -> int:
    """End a batch's jobs that have not started (queued, or waiting out a backoff) as
    `budget_exceeded`. Running jobs stop at their own next budget check. Their queue messages
    become no-ops: the claim only takes queued or retrying jobs."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn.execute(
            text(
                "UPDATE jobs SET status = 'failed', error_code = 'budget_exceeded', "
                "error_message = :m, finished_at = now(), cost_usd = 0, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE batch_id = :b AND status IN ('queued', 'retrying')"
            ),
            {"b": batch_id, "m": message},
        ).rowcount


def usage_rollup(
    engine: Engine,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    group_by: GroupBy | None,
) -> list[dict[str, Any]]:
    """Attempts of one tenant in [start, end), summed per group (one total row for None)."""
    group, label = _GROUP_EXPR[group_by] if group_by else ("NULL", "NULL")
    sql = (
        f"SELECT {group} AS grp, {label} AS label, count(*) AS attempts, "
        "count(DISTINCT a.job_id) AS jobs, coalesce(sum(a.input_tokens), 0) AS input_tokens, "
        "coalesce(sum(a.output_tokens), 0) AS output_tokens, "
        "coalesce(sum(a.cached_tokens), 0) AS cached_tokens, "
        "coalesce(sum(a.cost_usd), 0) AS cost_usd, "
        "count(*) FILTER (WHERE a.cost_usd IS NULL) AS unpriced_attempts "
        "FROM attempts a JOIN jobs j ON j.id = a.job_id "
        "LEFT JOIN api_keys k ON k.id = j.api_key_id "
        "WHERE a.tenant_id = :t AND a.created_at >= :start AND a.created_at < :end "
        + ("GROUP BY 1 ORDER BY 1 NULLS LAST" if group_by else "")
    )
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"t": tenant_id, "start": start, "end": end}).mappings()
        return [dict(r) for r in rows]

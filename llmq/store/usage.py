"""What tenants spent: spend sums for budget checks, and the usage rollups of GET /v1/usage.

Spend and rollups are computed from the `attempts` table (one row per provider call, unique
per job and attempt number), so spend, rollups and job totals all come from the same rows;
the per-template comparison reads the jobs (one row per request).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
    """USD recorded for the provider calls of a batch's jobs."""
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT coalesce(sum(a.cost_usd), 0) FROM attempts a "
                "JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = :b"
            ),
            {"b": batch_id},
        ).scalar_one()
    return Decimal(value)


def usage_rollup(
    engine: Engine,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    group_by: GroupBy | None,
    kinds: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Attempts of one tenant in [start, end), summed per group (one total row for None);
    `kinds` keeps only the attempts of jobs of those kinds (primary, shadow, judge:
    llmq/execution/shadow.py)."""
    group, label = _GROUP_EXPR[group_by] if group_by else ("NULL", "NULL")
    sql = (
        f"SELECT {group} AS grp, {label} AS label, count(*) AS attempts, "
        "count(DISTINCT a.job_id) AS jobs, coalesce(sum(a.input_tokens), 0) AS input_tokens, "
        "coalesce(sum(a.output_tokens), 0) AS output_tokens, "
        "coalesce(sum(a.cached_tokens), 0) AS cached_tokens, "
        "coalesce(sum(a.cost_usd), 0) AS cost_usd, "
        "count(*) FILTER (WHERE a.cost_usd IS NULL) AS unpriced_attempts, "
        "coalesce(sum(a.sync_cost_usd - a.cost_usd), 0) AS saved_usd "
        "FROM attempts a JOIN jobs j ON j.id = a.job_id "
        "LEFT JOIN api_keys k ON k.id = j.api_key_id "
        "WHERE a.tenant_id = :t AND a.created_at >= :start AND a.created_at < :end "
        "AND (CAST(:kinds AS text[]) IS NULL OR j.kind = ANY(CAST(:kinds AS text[]))) "
        + ("GROUP BY 1 ORDER BY 1 NULLS LAST" if group_by else "")
    )
    with engine.connect() as conn:
        rows = conn.execute(
            text(sql),
            {
                "t": tenant_id,
                "start": start,
                "end": end,
                "kinds": None if kinds is None else list(kinds),
            },
        ).mappings()
        return [dict(r) for r in rows]


def usage_by_template(
    engine: Engine, tenant_id: uuid.UUID, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Jobs, outcomes, tokens and cost per template version (A/B comparisons). Chunk and reduce
    jobs are left out: their parent already carries their tokens and cost."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT template, template_version, count(*) AS jobs, "
                    "count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
                    "count(*) FILTER (WHERE status IN ('failed', 'blocked')) AS failed, "
                    "coalesce(sum(input_tokens), 0) AS input_tokens, "
                    "coalesce(sum(output_tokens), 0) AS output_tokens, "
                    "coalesce(sum(cost_usd), 0) AS cost_usd FROM jobs "
                    "WHERE tenant_id = :t AND parent_id IS NULL AND kind = 'primary' "
                    "AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since) "
                    "GROUP BY template, template_version ORDER BY template, template_version"
                ),
                {"t": tenant_id, "since": since},
            ).mappings()
        ]

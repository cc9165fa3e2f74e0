"""GET /v1/usage (cost rollups) and GET /v1/budget (limits and what is left): tenant-scoped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from llmq import ledger
from llmq.budgets import day_start, month_start

from ..deps import EngineDep, PrincipalDep
from ..errors import ApiError
from ..schemas import ErrorOut, Usd

router = APIRouter(prefix="/v1", tags=["usage"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 422: {"model": ErrorOut}}


class UsageTotals(BaseModel):
    attempts: int
    jobs: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Usd
    unpriced_attempts: int


class UsageRow(UsageTotals):
    group: str | None
    label: str | None = None


class UsageOut(BaseModel):
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    group_by: str
    rows: list[UsageRow]
    total: UsageTotals


class BudgetOut(BaseModel):
    daily_usd: Usd | None
    monthly_usd: Usd | None
    spent_today_usd: Usd
    spent_this_month_usd: Usd
    remaining_today_usd: Usd | None
    remaining_this_month_usd: Usd | None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/usage", response_model=UsageOut, responses=ERRORS)
def usage(
    engine: EngineDep,
    who: PrincipalDep,
    from_: Annotated[
        datetime | None,
        Query(alias="from", description="start (inclusive, ISO 8601; default: month start)"),
    ] = None,
    to: Annotated[
        datetime | None, Query(description="end (exclusive, ISO 8601; default: now)")
    ] = None,
    group_by: Literal["model", "day", "batch", "key"] = "model",
) -> UsageOut:
    """Cost and tokens of the caller's provider calls, summed per model, UTC day, batch or
    API key. Every figure is a sum over the same attempt rows, so the rows add up to the total
    and the total equals the jobs' and batches' own cost figures."""
    now = datetime.now(UTC)
    start = _utc(from_) if from_ else month_start(now)
    end = _utc(to) if to else now + timedelta(seconds=1)
    if start >= end:
        raise ApiError(422, "invalid_request", "'from' must be before 'to'")
    rows = ledger.usage_rollup(engine, who.tenant_id, start, end, group_by)
    # The total is its own query over the same rows (a job seen in two groups counts once).
    (total,) = ledger.usage_rollup(engine, who.tenant_id, start, end, None)
    return UsageOut(
        from_=start,
        to=end,
        group_by=group_by,
        rows=[UsageRow(group=r.pop("grp"), **r) for r in rows],
        total=UsageTotals(**{k: v for k, v in total.items() if k not in ("grp", "label")}),
    )


@router.get("/budget", response_model=BudgetOut, responses=ERRORS)
def budget(engine: EngineDep, who: PrincipalDep) -> BudgetOut:
    """The caller's limits (null = none), what it spent today and this month (UTC), and what
    is left."""
    now = datetime.now(UTC)
    limits = ledger.get_budget(engine, who.tenant_id)
    today = ledger.tenant_spend(engine, who.tenant_id, day_start(now))
    month = ledger.tenant_spend(engine, who.tenant_id, month_start(now))
    daily = limits.daily_usd if limits else None
    monthly = limits.monthly_usd if limits else None
    return BudgetOut(
        daily_usd=daily,
        monthly_usd=monthly,
        spent_today_usd=today,
        spent_this_month_usd=month,
        remaining_today_usd=max(Decimal(0), daily - today) if daily is not None else None,
        remaining_this_month_usd=max(Decimal(0), monthly - month) if monthly is not None else None,
    )

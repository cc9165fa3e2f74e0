"""GET /v1/usage (cost rollups), /v1/usage/templates (per template version, for A/B) and
GET /v1/budget (limits and what is left): all tenant-scoped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from llmq import store
from llmq.cost.budgets import day_start, month_start

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
    # Provider Batch lane calls: what the same tokens would have cost on the sync lane, less
    # what they cost (0 when nothing went through the lane).
    saved_usd: Usd = Decimal(0)


class UsageRow(UsageTotals):
    group: str | None
    label: str | None = None


class UsageOut(BaseModel):
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    group_by: str
    rows: list[UsageRow]
    total: UsageTotals
    # The part of `total` spent on shadow runs and their judges (docs/evals.md); budgets count it.
    shadow: UsageTotals


class BudgetOut(BaseModel):
    daily_usd: Usd | None
    monthly_usd: Usd | None
    spent_today_usd: Usd
    spent_this_month_usd: Usd
    remaining_today_usd: Usd | None
    remaining_this_month_usd: Usd | None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def query_time(value: datetime | float, name: str) -> datetime:
    """An ISO 8601 time or Unix seconds (both are what people paste), in UTC."""
    try:
        if isinstance(value, datetime):
            return _utc(value)
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ApiError(422, "invalid_request", f"{name}: {value} is out of range") from None


def _default_from(end: datetime, now: datetime) -> datetime:
    """The start of the month `to` falls in (this month without `to`). `to` is exclusive, so
    one at a month's first instant means the month before."""
    try:
        return month_start(min(now, end - timedelta(microseconds=1)))
    except OverflowError:
        raise ApiError(422, "invalid_request", "to: out of range") from None


@router.get("/usage", response_model=UsageOut, responses=ERRORS)
def usage(
    engine: EngineDep,
    who: PrincipalDep,
    from_: Annotated[
        datetime | float | None,
        Query(
            alias="from",
            description="start (inclusive, ISO 8601 or Unix seconds; default: the start of "
            "the month of `to`); must be before `to`",
        ),
    ] = None,
    to: Annotated[
        datetime | float | None,
        Query(description="end (exclusive, ISO 8601 or Unix seconds; default: now)"),
    ] = None,
    group_by: store.GroupBy = "model",
) -> UsageOut:
    """Cost and tokens of the caller's provider calls, summed per model, UTC day, batch or
    API key. Every figure is a sum over the same attempt rows, so the rows add up to the total
    and the total equals the jobs' and batches' own cost figures."""
    now = datetime.now(UTC)
    end = query_time(to, "to") if to is not None else now + timedelta(seconds=1)
    start = query_time(from_, "from") if from_ is not None else _default_from(end, now)
    if start >= end:
        raise ApiError(422, "invalid_request", "'from' must be before 'to'")
    rows = store.usage_rollup(engine, who.tenant_id, start, end, group_by)
    # The total is its own query over the same rows (a job seen in two groups counts once).
    (total,) = store.usage_rollup(engine, who.tenant_id, start, end, None)
    (shadow,) = store.usage_rollup(
        engine, who.tenant_id, start, end, None, kinds=("shadow", "judge")
    )
    return UsageOut(
        from_=start,
        to=end,
        group_by=group_by,
        rows=[UsageRow(group=r.pop("grp"), **r) for r in rows],
        total=UsageTotals(**{k: v for k, v in total.items() if k not in ("grp", "label")}),
        shadow=UsageTotals(**{k: v for k, v in shadow.items() if k not in ("grp", "label")}),
    )


@router.get("/budget", response_model=BudgetOut, responses=ERRORS)
def budget(engine: EngineDep, who: PrincipalDep) -> BudgetOut:
    """The caller's limits (null = none), what it spent today and this month (UTC), and what
    is left."""
    now = datetime.now(UTC)
    limits = store.get_budget(engine, who.tenant_id)
    today = store.tenant_spend(engine, who.tenant_id, day_start(now))
    month = store.tenant_spend(engine, who.tenant_id, month_start(now))
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


class TemplateUsage(BaseModel):
    template: str
    template_version: int
    jobs: int
    succeeded: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: Usd


class TemplateUsageOut(BaseModel):
    data: list[TemplateUsage]


@router.get(
    "/usage/templates",
    response_model=TemplateUsageOut,
    responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
def usage_by_template(
    engine: EngineDep, who: PrincipalDep, since: datetime | float | None = None
) -> TemplateUsageOut:
    """`since`: an ISO 8601 time or Unix seconds."""
    start = query_time(since, "since") if since is not None else None
    rows = store.usage_by_template(engine, who.tenant_id, start)
    return TemplateUsageOut(data=[TemplateUsage.model_validate(r) for r in rows])

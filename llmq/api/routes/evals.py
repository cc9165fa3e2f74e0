"""GET /v1/evals: the evaluation log of shadow runs, reported per variant (docs/evals.md), and
GET /v1/evals/pairs/{pair_id}: both answers of one pair, to read a difference by eye.
Tenant-scoped like every read."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llmq import store
from llmq.evals import report
from llmq.templates import TemplateError, get_family

from ..deps import EngineDep, PrincipalDep
from ..errors import ApiError
from ..schemas import error_responses
from .jobs import parse_id
from .usage import query_time

router = APIRouter(prefix="/v1", tags=["evals"])
MAX_ROWS = 100_000


class StatOut(BaseModel):
    mean: float
    p50: float


class DiffOut(BaseModel):
    """Mean of (variant - primary) over the pairs where both succeeded, with its 95% interval
    (None below 2 pairs)."""

    n: int
    mean: float
    ci_low: float | None
    ci_high: float | None


class VariantOut(BaseModel):
    variant: str
    role: str
    n: int
    failed: int
    failure_rate: float
    cost_per_1k_usd: float | None
    latency_p50_ms: float
    latency_p95_ms: float
    input_tokens: int
    output_tokens: int
    scores: dict[str, StatOut]
    vs_primary: dict[str, DiffOut]


class EvalsOut(BaseModel):
    template: str
    since: datetime | None
    rows: int
    variants: list[VariantOut]


class PairRowOut(BaseModel):
    job_id: str
    role: str
    variant: str
    status: str
    output: str | None
    scores: dict[str, float]


class PairOut(BaseModel):
    pair_id: str
    rows: list[PairRowOut]


def records(rows: list[dict[str, object]]) -> list[report.EvalRecord]:
    return [
        report.EvalRecord(
            pair_id=str(r["pair_id"]),
            role=str(r["role"]),
            variant=str(r["variant"]),
            status=str(r["status"]),
            cost_usd=None if r["cost_usd"] is None else float(r["cost_usd"]),  # type: ignore[arg-type]
            latency_ms=float(r["latency_ms"]),  # type: ignore[arg-type]
            scores={k: float(v) for k, v in dict(r["scores"]).items()},  # type: ignore[call-overload]
            input_tokens=int(r["input_tokens"]),  # type: ignore[call-overload]
            output_tokens=int(r["output_tokens"]),  # type: ignore[call-overload]
        )
        for r in rows
    ]


@router.get("/evals", response_model=EvalsOut, responses=error_responses(401, 422))
def evals(
    engine: EngineDep,
    who: PrincipalDep,
    template: Annotated[str, Query(min_length=1, max_length=100, description="template name")],
    since: Annotated[
        datetime | float | None, Query(description="ISO 8601 time or Unix seconds")
    ] = None,
) -> EvalsOut:
    """Per variant of `template` (primary and shadows): n, failure rate, cost per 1,000 jobs,
    p50/p95 provider latency, mean and p50 of each score, and each score's paired difference
    to the primary with a 95% confidence interval."""
    try:
        get_family(template, public=True)
    except TemplateError as exc:
        raise ApiError(422, "invalid_template", str(exc)) from None
    start = query_time(since, "since") if since is not None else None
    rows = store.eval_rows(engine, who.tenant_id, template, start, MAX_ROWS)
    built = report.build(records(rows))
    return EvalsOut(
        template=template,
        since=start,
        rows=len(rows),
        variants=[VariantOut.model_validate(v) for v in report.as_json(built)],
    )


@router.get("/evals/pairs/{pair_id}", response_model=PairOut, responses=error_responses(401, 404))
def eval_pair(pair_id: str, engine: EngineDep, who: PrincipalDep) -> PairOut:
    """The primary's and the shadow's answers of one pair (`pair_id` is the primary job's id)."""
    rows = store.eval_pair_outputs(engine, who.tenant_id, parse_id(pair_id, "pair"))
    if not rows:
        raise ApiError(404, "not_found", f"pair {pair_id} not found")
    return PairOut(pair_id=pair_id, rows=[PairRowOut.model_validate(r) for r in rows])

"""GET /v1/usage/templates: usage per template version, to compare the arms of an A/B test."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel

from llmq import repository

from ..deps import EngineDep, PrincipalDep
from ..errors import ApiError
from ..schemas import ErrorOut, Usd

router = APIRouter(prefix="/v1/usage", tags=["usage"])


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
    "/templates",
    response_model=TemplateUsageOut,
    responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
def usage_by_template(
    engine: EngineDep, who: PrincipalDep, since: datetime | float | None = None
) -> TemplateUsageOut:
    """`since`: an ISO 8601 time or Unix seconds (both are what people paste)."""
    if isinstance(since, float | int):
        try:
            since = datetime.fromtimestamp(since, UTC)
        except (OverflowError, OSError, ValueError):
            raise ApiError(422, "invalid_request", f"since: {since} is out of range") from None
    rows = repository.usage_by_template(engine, who.tenant_id, since)
    return TemplateUsageOut(data=[TemplateUsage.model_validate(r) for r in rows])

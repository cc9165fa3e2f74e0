"""GET /v1/usage/templates: usage per template version, to compare the arms of an A/B test."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from llmq import repository

from ..deps import EngineDep, PrincipalDep
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
    engine: EngineDep, who: PrincipalDep, since: datetime | None = None
) -> TemplateUsageOut:
    rows = repository.usage_by_template(engine, who.tenant_id, since)
    return TemplateUsageOut(data=[TemplateUsage.model_validate(r) for r in rows])

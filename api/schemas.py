"""Request and response bodies. Unknown fields are rejected (422) so typos never pass silently."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from llmq.providers.registry import parse_link

Priority = Literal["high", "default", "low"]
# Money as an exact fixed-point string ("0.0000123000"), never a float or "0E-10".
Usd = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]
MAX_INPUT_CHARS = 2_000_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Params(Strict):
    style: str | None = Field(
        default=None, description="summary style: paragraph|short|bullets|executive"
    )
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    no_cache: bool = False


def _check_chain(chain: list[str] | None) -> list[str] | None:
    if chain is None:
        return None
    if not chain:
        raise ValueError("chain must name at least one provider:model link")
    for link in chain:
        parse_link(link)
    return chain


class JobIn(Strict):
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="document or prompt")
    template: str = "summarize"
    params: Params = Params()
    priority: Priority = "default"
    chain: list[str] | None = Field(default=None, max_length=10)
    custom_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _chain = field_validator("chain")(_check_chain)


class BatchItem(Strict):
    custom_id: str | None = Field(default=None, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    params: Params | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class BatchIn(Strict):
    items: list[BatchItem] = Field(min_length=1)
    template: str = "summarize"
    params: Params = Params()
    priority: Priority = "default"
    chain: list[str] | None = Field(default=None, max_length=10)
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_cost_usd: Decimal | None = Field(
        default=None,
        gt=0,
        max_digits=20,
        decimal_places=10,
        description="spending cap of the whole batch in USD: once its remaining jobs cannot be "
        "covered, they end failed with budget_exceeded",
    )

    _chain = field_validator("chain")(_check_chain)

    @model_validator(mode="after")
    def _unique_custom_ids(self) -> BatchIn:
        seen: set[str] = set()
        for index, item in enumerate(self.items):
            if item.custom_id is None:
                continue
            if item.custom_id in seen:
                raise ValueError(f"items[{index}].custom_id {item.custom_id!r} is a duplicate")
            seen.add(item.custom_id)
        return self


class JobAccepted(BaseModel):
    id: str
    status: str = "queued"


class BatchAccepted(BaseModel):
    id: str
    item_count: int
    status: str = "queued"


class AttemptOut(BaseModel):
    attempt_no: int
    provider: str
    model: str
    outcome: str
    http_status: int | None
    error_code: str | None
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Usd | None
    worker: str | None
    created_at: datetime


class JobOut(BaseModel):
    id: str
    batch_id: str | None
    custom_id: str | None
    status: str
    priority: str
    template: str
    template_version: int
    result: str | None
    provider: str | None
    model: str | None
    cache_hit: bool
    error_code: str | None
    error_message: str | None
    route: list[dict[str, Any]]
    guardrails: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    cost_usd: Usd | None
    attempts_made: int
    attempts: list[AttemptOut]
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class BatchOut(BaseModel):
    id: str
    status: Literal["in_progress", "completed"]
    template: str
    priority: str
    chain: list[str]
    metadata: dict[str, Any]
    item_count: int
    completed: int
    counts: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_usd: Usd
    created_at: datetime
    finished_at: datetime | None
    max_cost_usd: Usd | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody

"""Request and response bodies. Unknown fields are rejected (422) so typos never pass silently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from llmq.durations import parse_duration
from llmq.execution.output_review import check_schema
from llmq.providers.links import KNOWN_PROVIDERS, parse_link

Priority = Literal["high", "default", "low"]
# Money as an exact fixed-point string ("0.0000123000"), never a float or "0E-10".
Usd = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]
MAX_INPUT_CHARS = 2_000_000
MAX_COMPLETION_WINDOW_S = 7 * 86_400
MAX_METADATA_BYTES = 16_384
MAX_CUSTOM_ID_CHARS = 200
# Pydantic's JSON parser (jiter, for batch bodies and JSONL lines) refuses a little past 200
# levels; fields that take free-form JSON are held to the same depth, so one limit is true.
MAX_JSON_DEPTH = 200
JSON_TOO_DEEP = f"JSON nested too deep (at most {MAX_JSON_DEPTH} levels)"


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL, and lone surrogates are not UTF-8: both would fail at
    # INSERT time (a 500), so they are refused here with a 422.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    if value.isascii():  # the common case, without copying the text
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def json_depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, `[]` is 1), without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        item, at = level.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is not None:
            depth = max(depth, at)
            level.extend((child, at + 1) for child in children)
    return depth


def _not_too_deep(value: Any) -> Any:
    if value is not None and json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(JSON_TOO_DEEP)
    return value


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if not value:  # most batch items carry none
        return value
    _not_too_deep(value)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError("metadata must be plain JSON without lone surrogates") from None
    if any("\x00" in part for part in _strings(value)):  # JSONB refuses NUL
        raise ValueError("metadata must not contain NUL characters")
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; the cap is {MAX_METADATA_BYTES}")
    return value


def _whole(value: object) -> object:
    # JSON has one number type: JSON Schema counts 3.0 as an integer, and so do we (strict mode
    # still refuses "3", true and 3.5).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# After the int's own constraints (Annotated[int, Field(ge=1), WHOLE]): before them, pydantic
# cannot write them as JSON Schema `minimum`/`maximum`, and the fuzzer reads the schema.
WHOLE = BeforeValidator(_whole)
Text = Annotated[str, AfterValidator(_storable)]
Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_storable)]
# Documented as a pattern; parse_link checks the same and says which provider is unknown.
LINK_PATTERN = f"^(?:{'|'.join(KNOWN_PROVIDERS)}):[\\s\\S]"
Link = Annotated[str, Field(max_length=200, json_schema_extra={"pattern": LINK_PATTERN})]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_metadata)]
# The length inside the Annotated, so a long one is "at most 200 characters" (on `X | None` a
# Field(max_length) becomes a generic "items" check).
CustomId = Annotated[str, Field(max_length=MAX_CUSTOM_ID_CHARS), AfterValidator(_storable)]


class Strict(BaseModel):
    # Unknown fields are rejected, and so are lax coercions ("5" or true for a number, 1 for a
    # boolean): a client that sends the wrong type learns it now, not from a surprising result.
    model_config = ConfigDict(extra="forbid", strict=True)


class ShortInputIn(Strict):
    """Size-based routing for this request (llmq/execution/routing.py)."""

    link: Link = Field(description="provider:model tried first for a short input")
    max_input_tokens: Annotated[int, Field(ge=1, le=10_000_000), WHOLE] = Field(
        description="inputs of at most this many estimated tokens"
    )

    @field_validator("link")
    @classmethod
    def _known_link(cls, link: str) -> str:
        parse_link(link)
        return link


class Params(Strict):
    style: Annotated[str, Field(max_length=50)] | None = Field(
        default=None, description="summary style: paragraph|short|bullets|executive"
    )
    max_tokens: Annotated[int, Field(ge=1, le=32_000), WHOLE] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    no_cache: bool = False
    # Structured output (llmq/execution/output_review.py): the answer must be JSON, matching
    # json_schema when one is given (json_schema alone implies "json").
    response_format: Literal["text", "json"] | None = None
    json_schema: dict[str, Any] | None = None

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        _not_too_deep(schema)
        if schema is not None and (problem := check_schema(schema)) is not None:
            raise ValueError(problem)
        return schema

    variables: dict[str, str | int | float | bool] | None = Field(
        default=None, description="values of the template's declared variables"
    )
    short_input: ShortInputIn | None = Field(
        default=None,
        description="try this cheaper model first when the input is short (overrides the "
        "template's route)",
    )
    semantic_cache: bool | float | None = Field(
        default=None,
        description="semantic cache for this job: false (off), true (on at the template's "
        "threshold) or a cosine-similarity threshold in (0, 1]",
    )

    @field_validator("semantic_cache")
    @classmethod
    def _threshold(cls, value: bool | float | None) -> bool | float | None:
        if value is not None and not isinstance(value, bool) and not 0 < value <= 1:
            raise ValueError("a threshold must be in (0, 1]; or give false (off) or true")
        return value


def _check_chain(chain: list[Link] | None) -> list[Link] | None:
    if chain is None:
        return None
    if not chain:
        raise ValueError("chain must name at least one provider:model link")
    for link in chain:
        parse_link(link)
    return chain


class JobIn(Strict):
    input: Text = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="document or prompt")
    template: Name = "summarize"
    params: Params = Params()
    priority: Priority = "default"
    chain: list[Link] | None = Field(default=None, min_length=1, max_length=10)
    custom_id: CustomId | None = None
    metadata: Metadata = Field(default_factory=dict)
    template_version: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        default=None, description="pin a template version (no A/B assignment)"
    )

    _chain = field_validator("chain")(_check_chain)


class BatchItem(Strict):
    custom_id: CustomId | None = None
    input: Text = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    params: Params | None = None
    metadata: Metadata = Field(default_factory=dict)


class ShadowIn(Strict):
    """Re-run a share of the batch's succeeded jobs with another version or chain, on the low
    queue, and log both answers for `GET /v1/evals` (docs/evals.md). Never shown in results."""

    chain: list[Link] = Field(min_length=1, max_length=10, description="the shadow's chain")
    version: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        default=None, description="template version of the shadow (default: the job's own)"
    )
    percent: float = Field(default=100, ge=0, le=100, description="share of jobs shadowed")
    judge: Link | None = Field(
        default=None, description="provider:model that scores each pair (a priced job of its own)"
    )

    _chain = field_validator("chain")(_check_chain)

    @field_validator("judge")
    @classmethod
    def _judge_link(cls, link: str | None) -> str | None:
        if link is not None:
            parse_link(link)
        return link


class BatchIn(Strict):
    items: list[BatchItem] = Field(min_length=1)
    template: Name = "summarize"
    params: Params = Params()
    priority: Priority = "default"
    chain: list[Link] | None = Field(default=None, min_length=1, max_length=10)
    metadata: Metadata = Field(default_factory=dict)
    completion_window: Annotated[int, WHOLE] | str | None = Field(
        default=None,
        description="jobs not done this long after submission end `expired`: seconds or "
        "'90s', '30m', '1h', '2d'",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2000,
        # Checked at admission (llmq/admission/webhook.py), which knows whether private
        # destinations are allowed: a refused destination is reported before a malformed one.
        description="an absolute http(s) URL, POSTed a signed event when the batch ends",
    )
    template_version: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        default=None, description="pin a template version (no A/B assignment)"
    )
    max_cost_usd: Decimal | None = Field(
        default=None,
        gt=0,
        max_digits=20,
        decimal_places=10,
        description="spending cap of the whole batch in USD: once its remaining jobs cannot be "
        "covered, they end failed with budget_exceeded",
    )
    shadow: ShadowIn | None = None
    lane: Literal["sync", "provider_batch"] = Field(
        default="sync",
        description="provider_batch: run through the providers' own Batch APIs at their batch "
        "price (50% today), answers within 24 h; not for priority high",
    )

    _chain = field_validator("chain")(_check_chain)

    @model_validator(mode="after")
    def _lane_priority(self) -> BatchIn:
        # High priority is for answers now; a provider's batch takes minutes to hours.
        if self.lane == "provider_batch" and self.priority == "high":
            raise ValueError(
                "lane provider_batch cannot be used with priority high: the providers' batches "
                "take minutes to hours; use priority default or low, or lane sync"
            )
        return self

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            window = parse_duration(value)
            if window > MAX_COMPLETION_WINDOW_S:
                raise ValueError("a completion window is at most 7 days")
        return value

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
    # Long documents: a chunk or reduce job names its parent; a parent reports its progress.
    parent_id: str | None = None
    chunk_level: int | None = None
    chunk_index: int | None = None
    progress: dict[str, Any] | None = None
    # Provider Batch lane: which lane, and while upstream the provider's batch id and status.
    lane: str = "sync"
    upstream_batch_id: str | None = None
    upstream_status: str | None = None


class WebhookState(BaseModel):
    url: str
    status: str | None  # None until the batch ends; then pending, delivered or failed
    attempts: int
    next_attempt_at: datetime | None


class BatchOut(BaseModel):
    id: str
    status: Literal["in_progress", "completed", "cancelling", "cancelled"]
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
    cancelled_at: datetime | None
    finished_at: datetime | None
    completion_window_s: int | None = None
    expires_at: datetime | None = None
    webhook: WebhookState | None = None
    max_cost_usd: Usd | None = None
    lane: Literal["sync", "provider_batch"] = Field(
        default="sync", description="the lane the batch was submitted on (see each job's lane)"
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route: each status answered with the one error body."""
    return {status: {"model": ErrorOut} for status in statuses}


# Batch API (issue 5)


class RetryOut(BaseModel):
    id: str
    retried: int


class WebhookSecretOut(BaseModel):
    secret: str
    header: str
    note: str


class WebhookDeliveryOut(BaseModel):
    attempt_no: int
    event_id: str
    url: str
    outcome: str
    http_status: int | None
    error: str | None
    latency_ms: float
    created_at: datetime


class WebhookDeliveriesOut(BaseModel):
    batch_id: str
    webhook: WebhookState | None
    deliveries: list[WebhookDeliveryOut]


# ---------------------------------------------------------------------------------------------
# API keys (admin scope): llmq/api/routes/admin.py


class KeyIn(Strict):
    tenant: Text = Field(min_length=1, max_length=200, description="tenant name (created if new)")
    admin: bool = Field(default=False, description="may manage keys")
    requests_per_min: Annotated[int, Field(ge=0, le=1_000_000), WHOLE] | None = Field(
        default=None, description="own limit; null = default, 0 = unlimited"
    )
    items_per_min: Annotated[int, Field(ge=0, le=100_000_000), WHOLE] | None = Field(
        default=None, description="own limit; null = default, 0 = unlimited"
    )


class KeyOut(BaseModel):
    id: str
    prefix: str
    tenant: str
    admin: bool
    requests_per_min: int | None
    items_per_min: int | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class KeyList(BaseModel):
    data: list[KeyOut]


class AuditEventOut(BaseModel):
    """One audit log row; `hash` chains it to the row before (`llmq audit verify`)."""

    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    data: list[AuditEventOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")

"""POST /v1/batches, GET /v1/batches/{id} and its JSONL results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import Engine

from llmq import store
from llmq.admission.pipeline import AdmissionPipeline, Item, Submission
from llmq.durations import parse_duration
from llmq.settings import Settings
from llmq.store import Principal
from llmq.store.models import JobStatus

from .. import cancel
from ..audit import record_download
from ..deps import AdmissionDep, EngineDep, EventsDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..intake import IdempotencyKey, once_per_key, read_batch
from ..openapi_bodies import native_batch
from ..schemas import BatchAccepted, BatchIn, BatchOut, ErrorOut, WebhookState, error_responses
from .jobs import parse_id

router = APIRouter(prefix="/v1/batches", tags=["batches"])
ERRORS = error_responses(401, 402, 404, 409, 422, 413, 429)


BATCH_BODY = native_batch("#/components/schemas/BatchIn")


@router.post(
    "",
    status_code=202,
    response_model=BatchAccepted,
    responses={**ERRORS, 409: {"model": ErrorOut}},
    openapi_extra=BATCH_BODY,
)
async def submit_batch(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    who: PrincipalDep,
    admission: AdmissionDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchAccepted | JSONResponse:
    body = await read_batch(request, settings.max_batch_items)
    return await run_in_threadpool(
        accept_batch, body, engine, settings, who, idempotency_key, admission
    )


def accept_batch(
    body: BatchIn,
    engine: Engine,
    settings: Settings,
    who: Principal,
    idempotency_key: str | None,
    admission: AdmissionPipeline,
) -> BatchAccepted | JSONResponse:
    """Off the event loop: a batch of 50k items takes a while to check and write."""
    answer = BatchAccepted(id="", item_count=len(body.items))
    once = once_per_key(engine, who, idempotency_key, "batches", body, answer,
                        settings.idempotency_ttl_s)  # fmt: skip
    outcome = admission.admit_batch(submission(body), who, once)
    if isinstance(outcome, JSONResponse):
        return outcome
    return BatchAccepted(id=str(outcome), item_count=len(body.items))


def submission(body: BatchIn) -> Submission:
    """The batch as admission takes it. Items without their own params share the defaults
    object (checked, priced and stored once)."""
    defaults = body.params.model_dump(exclude_none=True)
    items = [
        Item(
            item.input,
            {**defaults, **item.params.model_dump(exclude_none=True)} if item.params else defaults,
            item.custom_id,
            item.metadata,
        )
        for item in body.items
    ]
    window = body.completion_window
    return Submission(
        template=body.template,
        items=items,
        template_version=body.template_version,
        chain=body.chain,
        priority=body.priority,
        metadata=body.metadata,
        completion_window_s=parse_duration(window) if window else None,
        webhook_url=body.webhook_url,
        max_cost_usd=body.max_cost_usd,
        shadow=body.shadow.model_dump() if body.shadow else None,
        lane=body.lane,
    )


@router.get("/{batch_id}", response_model=BatchOut, responses=ERRORS)
def get_batch(batch_id: str, engine: EngineDep, who: PrincipalDep) -> BatchOut:
    batch = store.get_batch(engine, who.tenant_id, parse_id(batch_id, "batch"))
    if batch is None:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    batch["id"] = str(batch["id"])
    extras = store.get_batch_extras(engine, who.tenant_id, parse_id(batch_id, "batch"))
    return BatchOut.model_validate({**batch, **batch_extras(extras)})


def batch_extras(extras: dict[str, Any] | None) -> dict[str, Any]:
    """Completion window and webhook state, as BatchOut shows them."""
    if extras is None:
        return {}
    webhook = (
        WebhookState(
            url=extras["webhook_url"],
            status=extras["webhook_status"],
            attempts=extras["webhook_attempts"],
            next_attempt_at=extras["webhook_next_at"]
            if extras["webhook_status"] == "pending"
            else None,
        )
        if extras["webhook_url"]
        else None
    )
    return {
        "completion_window_s": extras["completion_window_s"],
        "expires_at": extras["expires_at"],
        "webhook": webhook,
    }


@router.post("/{batch_id}/cancel", response_model=BatchOut, responses=ERRORS)
def cancel_batch(
    batch_id: str, engine: EngineDep, events: EventsDep, who: PrincipalDep
) -> BatchOut:
    """Cancel every waiting job at once and every running one at its next step. Idempotent."""
    current = get_batch(batch_id, engine, who)
    if current.status == "completed":
        raise ApiError(409, "not_cancellable", f"batch {batch_id} already completed")
    cancel.cancel_batch(engine, events, who.tenant_id, uuid.UUID(current.id))
    return get_batch(batch_id, engine, who)


def _result_line(row: dict[str, Any]) -> str:
    error = (
        {"code": row["error_code"], "message": row["error_message"]} if row["error_code"] else None
    )
    return (
        json.dumps(
            {
                "custom_id": row["custom_id"],
                "job_id": str(row["id"]),
                "status": row["status"],
                "result": row["result"],
                "provider": row["provider"],
                "model": row["model"],
                "cache_hit": row["cache_hit"],
                "error": error,
                "input_tokens": row["input_tokens"],
                "output_tokens": row["output_tokens"],
                "cost_usd": format(row["cost_usd"], "f") if row["cost_usd"] is not None else None,
                "template": row["template"],
                "template_version": row["template_version"],
            }
        )
        + "\n"
    )


@router.get(
    "/{batch_id}/results",
    responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}}}},
)
def batch_results(
    batch_id: str,
    engine: EngineDep,
    who: PrincipalDep,
    status: Annotated[
        str | None, Query(description="only these states, comma-separated: failed,expired")
    ] = None,
) -> StreamingResponse:
    """One JSON line per item, in submission order; partial while the batch runs."""
    batch_uuid = parse_id(batch_id, "batch")
    statuses = parse_statuses(status)
    if store.get_batch_owner(engine, batch_uuid) != who.tenant_id:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    record_download(engine, who, "results.downloaded", str(batch_uuid), api="native",
                    statuses=statuses)  # fmt: skip

    def lines() -> Iterator[str]:
        for row in store.iter_batch_results(engine, batch_uuid, statuses=statuses):
            yield _result_line(row)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def parse_statuses(value: str | None) -> list[str] | None:
    if value is None:
        return None
    wanted = [part.strip() for part in value.split(",") if part.strip()]
    known = {status.value for status in JobStatus}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise ApiError(
            422,
            "invalid_request",
            f"query.status: unknown status {', '.join(unknown) or '(empty)'}; "
            f"use {', '.join(sorted(known))}",
        )
    return wanted

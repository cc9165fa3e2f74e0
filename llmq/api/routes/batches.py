"""POST /v1/batches, GET /v1/batches/{id} and its JSONL results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import Engine

from llmq import store
from llmq.durations import parse_duration
from llmq.guardrails.selection import GuardrailSelection
from llmq.settings import Settings
from llmq.store import Principal
from llmq.store.models import JobStatus
from llmq.webhooks.destinations import literal_refusal, url_problem
from llmq.workers.dispatch import publish_batch_dispatch

from .. import cancel
from ..budget_gate import enforce_budget
from ..deps import EngineDep, EventsDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..ingest_guard import check_prompt_size, redact_jobs, selection
from ..intake import IdempotencyKey, read_batch, submit_once
from ..key_limits import KeyLimiter
from ..openapi_bodies import native_batch
from ..schemas import BatchAccepted, BatchIn, BatchOut, ErrorOut, WebhookState
from .jobs import parse_id
from .submit import (
    assign_version,
    publish_quietly,
    resolve_chain,
    resolve_template,
    with_short_input_routes,
)

router = APIRouter(prefix="/v1/batches", tags=["batches"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    402: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
    413: {"model": ErrorOut},
    429: {"model": ErrorOut},
}


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
    idempotency_key: IdempotencyKey = None,
    guards: GuardrailSelection = Depends(selection),
) -> BatchAccepted | JSONResponse:
    body = await read_batch(request, settings.max_batch_items)
    limiter: KeyLimiter = request.app.state.key_limiter
    return await run_in_threadpool(
        accept_batch, body, engine, settings, who, idempotency_key, guards, limiter
    )


def accept_batch(
    body: BatchIn,
    engine: Engine,
    settings: Settings,
    who: Principal,
    idempotency_key: str | None,
    guards: GuardrailSelection,
    limiter: KeyLimiter,
) -> BatchAccepted | JSONResponse:
    defaults = body.params.model_dump(exclude_none=True)
    # Items without their own params share the defaults object (stored once, checked once).
    params = [
        {**defaults, **item.params.model_dump(exclude_none=True)} if item.params else defaults
        for item in body.items
    ]
    distinct = {json.dumps(p, sort_keys=True): p for p in {id(p): p for p in params}.values()}
    template = resolve_template(
        body.template,
        [body.params.model_validate(p) for p in distinct.values()],
        body.template_version,
        settings,
    )
    limiter.check_items(who, len(body.items))  # only what would be written
    chain = resolve_chain(body.chain, settings)
    versions = [
        assign_version(
            template, body.template_version, who.tenant_id, item.custom_id, item.input, settings
        )
        for item in body.items
    ]
    params = with_short_input_routes(
        template, versions, params, explicit_chain=body.chain is not None, settings=settings
    )
    enforce_budget(
        engine, settings, who.tenant_id, template, chain,
        [(item.input, p) for item, p in zip(body.items, params, strict=True)],
    )  # fmt: skip
    window = parse_duration(body.completion_window) if body.completion_window else None
    if body.webhook_url and (
        settings.webhook_signing_key is None
        or store.get_webhook_salt(engine, who.tenant_id) is None
    ):
        raise ApiError(
            422,
            "webhook_secret_missing",
            "webhook_url needs a signing secret: create one with POST /v1/webhooks/secret"
            if settings.webhook_signing_key
            else "webhooks are disabled: the server has no LLMQ_WEBHOOK_SIGNING_KEY",
        )

    if body.webhook_url:
        check_webhook_url(body.webhook_url, settings)

    inputs = [item.input for item in body.items]
    check_prompt_size(guards, template, inputs, "body.items.{index}.input")
    stored = redact_jobs(guards, settings, template, list(zip(inputs, params, strict=True)))

    def insert(idempotency: store.Idempotency | None) -> uuid.UUID:
        return store.insert_batch(
            engine,
            tenant_id=who.tenant_id,
            template=template.name,
            template_version=template.version,
            priority=body.priority,
            chain=chain,
            meta=body.metadata,
            items=[
                store.NewJob(
                    input=job.input,
                    custom_id=item.custom_id,
                    params=job.params,
                    meta=item.metadata,
                    guardrails=job.findings,
                    template_version=version,
                )
                for item, version, job in zip(body.items, versions, stored, strict=True)
            ],
            completion_window_s=window,
            webhook_url=body.webhook_url,
            idempotency=idempotency,
            api_key_id=who.key_id,
            max_cost_usd=body.max_cost_usd,
        )

    answer = BatchAccepted(id="", item_count=len(body.items))
    outcome = submit_once(
        engine, who, idempotency_key, "batches", body, answer, insert, settings.idempotency_ttl_s
    )
    if isinstance(outcome, JSONResponse):
        return outcome
    batch_id = outcome
    publish_quietly(
        lambda: publish_batch_dispatch(str(batch_id), body.priority), f"batch {batch_id}"
    )
    return BatchAccepted(id=str(batch_id), item_count=len(body.items))


@router.get("/{batch_id}", response_model=BatchOut, responses=ERRORS)
def get_batch(batch_id: str, engine: EngineDep, who: PrincipalDep) -> BatchOut:
    batch = store.get_batch(engine, who.tenant_id, parse_id(batch_id, "batch"))
    if batch is None:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    batch["id"] = str(batch["id"])
    extras = store.get_batch_extras(engine, who.tenant_id, parse_id(batch_id, "batch"))
    return BatchOut.model_validate({**batch, **batch_extras(extras)})


def check_webhook_url(url: str, settings: Settings) -> None:
    """A 422 for a webhook URL no delivery could use. The destination is judged first, so
    127.0.0.1 in any spelling (0177.0.0.1, which httpx cannot even parse, included) gets the
    same answer."""
    refusal = None if settings.webhook_allow_private else literal_refusal(url)
    if refusal is not None:
        raise ApiError(
            422,
            "webhook_destination_refused",
            f"webhook_url is refused: {refusal} (deliveries go to public addresses only)",
        )
    problem = url_problem(url)
    if problem is not None:
        raise ApiError(422, "invalid_webhook_url", problem)


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

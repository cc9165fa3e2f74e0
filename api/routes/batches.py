"""POST /v1/batches, GET /v1/batches/{id} and its JSONL results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from llmq import repository
from workers.dispatch import publish_batch_dispatch

from ..budget_gate import enforce_budget
from ..deps import EngineDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..schemas import BatchAccepted, BatchIn, BatchOut, ErrorOut
from .jobs import parse_id
from .submit import publish_quietly, resolve_chain, resolve_template

router = APIRouter(prefix="/v1/batches", tags=["batches"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    402: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


@router.post("", status_code=202, response_model=BatchAccepted, responses=ERRORS)
def submit_batch(
    body: BatchIn, engine: EngineDep, settings: SettingsDep, who: PrincipalDep
) -> BatchAccepted:
    if len(body.items) > settings.max_batch_items:
        raise ApiError(
            422,
            "too_many_items",
            f"a batch holds at most {settings.max_batch_items} items, got {len(body.items)}",
        )
    defaults = body.params.model_dump(exclude_none=True)
    # Items without their own params share the defaults object (stored once, checked once).
    params = [
        {**defaults, **item.params.model_dump(exclude_none=True)} if item.params else defaults
        for item in body.items
    ]
    distinct = {json.dumps(p, sort_keys=True): p for p in {id(p): p for p in params}.values()}
    template = resolve_template(
        body.template, [body.params.model_validate(p) for p in distinct.values()]
    )
    chain = resolve_chain(body.chain, settings)
    enforce_budget(
        engine, settings, who.tenant_id, template, chain,
        [(item.input, p) for item, p in zip(body.items, params, strict=True)],
    )  # fmt: skip
    batch_id = repository.insert_batch(
        engine,
        tenant_id=who.tenant_id,
        template=template.name,
        template_version=template.version,
        priority=body.priority,
        chain=chain,
        meta=body.metadata,
        items=[
            repository.NewJob(
                input=item.input, custom_id=item.custom_id, params=p, meta=item.metadata
            )
            for item, p in zip(body.items, params, strict=True)
        ],
        api_key_id=who.key_id,
        max_cost_usd=body.max_cost_usd,
    )
    publish_quietly(
        lambda: publish_batch_dispatch(str(batch_id), body.priority), f"batch {batch_id}"
    )
    return BatchAccepted(id=str(batch_id), item_count=len(body.items))


@router.get("/{batch_id}", response_model=BatchOut, responses=ERRORS)
def get_batch(batch_id: str, engine: EngineDep, who: PrincipalDep) -> BatchOut:
    batch = repository.get_batch(engine, who.tenant_id, parse_id(batch_id, "batch"))
    if batch is None:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    batch["id"] = str(batch["id"])
    return BatchOut.model_validate(batch)


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
            }
        )
        + "\n"
    )


@router.get(
    "/{batch_id}/results",
    responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}}}},
)
def batch_results(batch_id: str, engine: EngineDep, who: PrincipalDep) -> StreamingResponse:
    """One JSON line per item, in submission order; partial while the batch runs."""
    batch_uuid = parse_id(batch_id, "batch")
    if repository.get_batch_owner(engine, batch_uuid) != who.tenant_id:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")

    def lines() -> Iterator[str]:
        for row in repository.iter_batch_results(engine, batch_uuid):
            yield _result_line(row)

    return StreamingResponse(lines(), media_type="application/x-ndjson")

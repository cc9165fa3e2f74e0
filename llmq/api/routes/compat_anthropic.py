"""The Anthropic-compatible Message Batches surface under /anthropic/v1/messages/batches.

Point the official client at it (`Anthropic(base_url="http://host/anthropic", api_key=<llmq
key>)`); it sends the key as `x-api-key` and an `anthropic-version` header (accepted, any value).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from llmq import store
from llmq.compat import anthropic_format as fmt
from llmq.compat.common import FieldError, parse_public_id, public_id

from .. import cancel
from ..audit import record_download
from ..deps import AdmissionDep, EngineDep, EventsDep, SettingsDep
from ..openapi_bodies import ANTHROPIC_BATCH_BODY
from .compat_common import (
    CATCH_ALL_METHODS,
    CompatError,
    CompatPrincipal,
    ResolverDep,
    page_limit,
    route_class,
    unknown_route,
)

BATCH_ID_PATTERN = f"^{fmt.BATCH_PREFIX}[0-9a-fA-F]{{32}}$"
_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    409: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error",
}  # fmt: skip


def _render(error: CompatError, request_id: str) -> dict[str, Any]:
    kind = error.kind or _TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message},
            "request_id": request_id}  # fmt: skip


COMPAT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": "Anthropic-shaped error body"}
    for code in (400, 401, 404, 409, 413, 422, 429, 503, 504)
}
router = APIRouter(
    prefix="/anthropic/v1/messages/batches",
    tags=["anthropic-compatible"],
    # The status codes the real API uses for errors, in its own error body shape.
    responses=COMPAT_ERRORS,
    route_class=route_class(_render, ("request-id",)),
)


def _results_path(record_id: uuid.UUID) -> str:
    # Relative to the API root the client was given (http://host/anthropic), so it is
    # reachable whatever host or proxy the client came through.
    return f"/v1/messages/batches/{public_id(fmt.BATCH_PREFIX, record_id)}/results"


def _record(batch_id: str, engine: Any, who: Any) -> dict[str, Any]:
    record_id = parse_public_id(batch_id, fmt.BATCH_PREFIX)
    record = (
        store.get_compat_batch(engine, who.tenant_id, "anthropic", record_id)
        if record_id is not None
        else None
    )
    if record is None:
        raise CompatError(404, f"message batch {batch_id!r} not found")
    return record


def _batch(record: dict[str, Any], engine: Any, who: Any) -> dict[str, Any]:
    native = store.get_batch(engine, who.tenant_id, record["batch_id"])
    assert native is not None  # the record cascades away with its batch
    return fmt.batch_object(record, native, _results_path(record["id"]))


@router.post("", openapi_extra=ANTHROPIC_BATCH_BODY)
def create_batch(
    body: dict[str, Any],
    engine: EngineDep,
    settings: SettingsDep,
    who: CompatPrincipal,
    models: ResolverDep,
    admission: AdmissionDep,
) -> dict[str, Any]:
    unknown = set(body) - {"requests"}
    if unknown:
        raise CompatError(400, f"{sorted(unknown)[0]}: Extra inputs are not permitted")
    try:
        items, rejected = fmt.parse_requests(
            body.get("requests"), models.resolve, admission.chat_ingest
        )
    except FieldError as exc:
        raise CompatError(400, exc.message) from exc
    if len(items) > settings.max_batch_items:
        raise CompatError(400, f"requests: at most {settings.max_batch_items} per batch")
    record_id = admission.admit_compat_batch(
        who, store.CompatBatchRecord(api="anthropic"), "default", items, rejected
    )
    return _batch(_record(public_id(fmt.BATCH_PREFIX, record_id), engine, who), engine, who)


@router.get("/{batch_id}")
def get_batch(batch_id: str, engine: EngineDep, who: CompatPrincipal) -> dict[str, Any]:
    return _batch(_record(batch_id, engine, who), engine, who)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-jsonl": {}}, "description": "JSONL results"}},
)
def batch_results(batch_id: str, engine: EngineDep, who: CompatPrincipal) -> StreamingResponse:
    """One line per finished request, in submission order; partial while the batch runs."""
    record = _record(batch_id, engine, who)
    record_download(engine, who, "results.downloaded", str(record["batch_id"]), api="anthropic",
                    public_id=batch_id)  # fmt: skip

    def lines() -> Iterator[bytes]:
        for row in store.iter_batch_results(engine, record["batch_id"]):
            line = fmt.result_line(row)
            if line is not None:
                yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-jsonl")


@router.post("/{batch_id}/cancel")
def cancel_batch(
    batch_id: str, engine: EngineDep, events: EventsDep, who: CompatPrincipal
) -> dict[str, Any]:
    """Idempotent: a canceling batch, or one that ended by a cancel, is returned as it is."""
    record = _record(batch_id, engine, who)
    current = _batch(record, engine, who)
    if current["processing_status"] == "ended" and current["cancel_initiated_at"] is None:
        raise CompatError(409, f"message batch {batch_id!r} has already ended")
    cancel.cancel_batch(engine, events, who.tenant_id, record["batch_id"])
    return _batch(record, engine, who)


@router.delete("/{batch_id}")
def delete_batch(batch_id: str, engine: EngineDep, who: CompatPrincipal) -> dict[str, Any]:
    """Only an ended batch can be deleted (cancel it first); its usage records are kept."""
    record = _record(batch_id, engine, who)
    if _batch(record, engine, who)["processing_status"] != "ended":
        raise CompatError(409, f"message batch {batch_id!r} is still processing; cancel it first")
    store.delete_compat_batch(engine, who.tenant_id, "anthropic", record["id"])
    return {"id": batch_id, "type": "message_batch_deleted"}


@router.get("")
def list_batches(
    engine: EngineDep,
    who: CompatPrincipal,
    after_id: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN)] = None,
    before_id: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN)] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> dict[str, Any]:
    cursors: dict[str, uuid.UUID | None] = {}
    for name, value in (("after", after_id), ("before", before_id)):
        cursors[name] = parse_public_id(value, fmt.BATCH_PREFIX) if value is not None else None
        if value is not None and cursors[name] is None:
            raise CompatError(400, f"{name}_id: {value!r} is not a message batch id")
    rows, has_more = store.list_compat_batches(
        engine, who.tenant_id, "anthropic", limit=page_limit(limit, 20, 1000), **cursors
    )
    data = [_batch(row, engine, who) for row in rows]
    return {
        "data": data, "has_more": has_more,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    }  # fmt: skip


# Registered last: any other path or method under the prefix is a 404 (or a 405 naming the
# path's methods) in this API's own error shape.
@router.api_route("/{path:path}", methods=CATCH_ALL_METHODS, include_in_schema=False)
def unknown_path(path: str, request: Request) -> None:
    raise unknown_route(request, f"/anthropic/v1/messages/batches/{path}")

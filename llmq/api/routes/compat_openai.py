"""The OpenAI-compatible surface under /openai/v1: Files, Batches and Chat Completions.

Point the official client at it (`OpenAI(base_url="http://host/openai/v1", api_key=<llmq key>)`)
and batches run as native llmq batches of `chat` jobs: same queues, pipeline, guardrails, cost.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmq import store
from llmq.compat import openai_format as fmt
from llmq.compat.batch_file import redact_file, served_content
from llmq.compat.common import FieldError, parse_public_id, public_id
from llmq.store.models import TERMINAL_STATUSES

from .. import cancel
from ..audit import record_download
from ..deps import AdmissionDep, EngineDep, EventsDep, SettingsDep
from ..openapi_bodies import CHAT_COMPLETION_BODY
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
_TYPES = {401: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


def _render(error: CompatError, _request_id: str) -> dict[str, Any]:
    kind = error.kind or _TYPES.get(error.status, "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param,
                      "code": error.code}}  # fmt: skip


COMPAT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": "OpenAI-shaped error body"}
    for code in (400, 401, 404, 409, 413, 422, 429, 503, 504)
}
router = APIRouter(
    prefix="/openai/v1",
    tags=["openai-compatible"],
    # The status codes the real API uses for errors, in its own error body shape.
    responses=COMPAT_ERRORS,
    route_class=route_class(_render, ("x-request-id",)),
)
PRIORITIES = ("high", "default", "low")


# ---------------------------------------------------------------------------------------------
# Files


@router.post("/files")
def upload_file(
    engine: EngineDep,
    settings: SettingsDep,
    who: CompatPrincipal,
    admission: AdmissionDep,
    file: UploadFile = File(...),
    purpose: str = Form(..., json_schema_extra={"const": "batch"}),
) -> dict[str, Any]:
    if purpose != "batch":
        raise CompatError(400, "only purpose 'batch' is supported", param="purpose")
    limit = settings.compat_max_file_bytes
    content = file.file.read(limit + 1)
    if len(content) > limit:
        raise CompatError(413, f"the file exceeds {limit} bytes", param="file")
    # Never stored raw: see llmq/compat/batch_file.py.
    stored = redact_file(content, admission.text_redactor)
    row = store.insert_compat_file(
        engine, who.tenant_id, file.filename or "upload.jsonl", purpose, stored.content,
        size=stored.size,
    )  # fmt: skip
    return fmt.file_object(
        public_id(fmt.FILE_PREFIX, row["id"]), row["filename"], row["purpose"], row["bytes"],
        row["created_at"],
    )  # fmt: skip


def _not_found(kind: str, value: str) -> CompatError:
    return CompatError(404, f"No {kind} found with id '{value}'.")


def _batch_file(file_id: str, engine: Any, who: Any) -> tuple[str, dict[str, Any]] | None:
    """(which, compat record) for a batch's output or error file id, else None."""
    for prefix, which in ((fmt.OUTPUT_FILE_PREFIX, "output"), (fmt.ERROR_FILE_PREFIX, "errors")):
        record_id = parse_public_id(file_id, prefix)
        if record_id is not None:
            record = store.get_compat_batch(engine, who.tenant_id, "openai", record_id)
            if record is None or record["batch_id"] is None:
                raise _not_found("file", file_id)
            return which, record
    return None


def _file_lines(engine: Any, batch_id: uuid.UUID, which: str) -> Iterator[bytes]:
    for row in store.iter_batch_results(engine, batch_id):
        line = fmt.result_line(row)
        if line is not None and line[0] == which:
            yield (json.dumps(line[1]) + "\n").encode()


@router.get("/files/{file_id}")
def get_file(file_id: str, engine: EngineDep, who: CompatPrincipal) -> dict[str, Any]:
    generated = _batch_file(file_id, engine, who)
    if generated is not None:
        which, record = generated
        size = sum(len(line) for line in _file_lines(engine, record["batch_id"], which))
        name = f"{public_id(fmt.BATCH_PREFIX, record['id'])}_{which}.jsonl"
        return fmt.file_object(file_id, name, "batch_output", size, record["created_at"])
    row = _uploaded(file_id, engine, who, with_content=False)
    return fmt.file_object(file_id, row["filename"], row["purpose"], row["bytes"],
                           row["created_at"])  # fmt: skip


def _uploaded(file_id: str, engine: Any, who: Any, *, with_content: bool) -> dict[str, Any]:
    file_uuid = parse_public_id(file_id, fmt.FILE_PREFIX)
    row = (
        store.get_compat_file(engine, who.tenant_id, file_uuid, with_content=with_content)
        if file_uuid is not None
        else None
    )
    if row is None:
        raise _not_found("file", file_id)
    return row


@router.get("/files/{file_id}/content", response_model=None)
def file_content(
    file_id: str, engine: EngineDep, who: CompatPrincipal
) -> Response | StreamingResponse:
    """An uploaded file as sent (personal data redacted), or a batch's results so far
    (partial while it runs)."""
    generated = _batch_file(file_id, engine, who)
    if generated is not None:
        which, record = generated
        record_download(engine, who, "file.downloaded", file_id, api="openai", which=which,
                        batch_id=str(record["batch_id"]))  # fmt: skip
        return StreamingResponse(
            _file_lines(engine, record["batch_id"], which), media_type="application/jsonl"
        )
    row = _uploaded(file_id, engine, who, with_content=True)
    record_download(engine, who, "file.downloaded", file_id, api="openai", which="upload")
    return Response(served_content(bytes(row["content"])), media_type="application/octet-stream")


# ---------------------------------------------------------------------------------------------
# Batches


class BatchCreate(BaseModel):
    # Newer SDKs may send fields we do not know; they never change how a batch runs here.
    model_config = ConfigDict(extra="ignore")

    # The values the route accepts, documented (the route's own checks say what is wrong).
    input_file_id: str
    endpoint: str = Field(json_schema_extra={"const": fmt.CHAT_ENDPOINT})
    completion_window: str = Field(json_schema_extra={"const": fmt.COMPLETION_WINDOW})
    metadata: dict[str, str] | None = Field(
        default=None,
        json_schema_extra={
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
            "properties": {"llmq_priority": {"enum": list(PRIORITIES)}},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    )


def _batch(record: dict[str, Any], engine: Any, who: Any) -> dict[str, Any]:
    native = (
        store.get_batch(engine, who.tenant_id, record["batch_id"])
        if record["batch_id"] is not None
        else None
    )
    return fmt.batch_object(record, native)


def _record(batch_id: str, engine: Any, who: Any) -> dict[str, Any]:
    record_id = parse_public_id(batch_id, fmt.BATCH_PREFIX)
    record = (
        store.get_compat_batch(engine, who.tenant_id, "openai", record_id)
        if record_id is not None
        else None
    )
    if record is None:
        raise _not_found("batch", batch_id)
    return record


@router.post("/batches")
def create_batch(
    body: BatchCreate,
    engine: EngineDep,
    settings: SettingsDep,
    who: CompatPrincipal,
    models: ResolverDep,
    admission: AdmissionDep,
) -> dict[str, Any]:
    if body.endpoint != fmt.CHAT_ENDPOINT:
        raise CompatError(400, f"endpoint {body.endpoint!r} is not supported; use "
                          f"{fmt.CHAT_ENDPOINT!r}", param="endpoint")  # fmt: skip
    if body.completion_window != fmt.COMPLETION_WINDOW:
        raise CompatError(400, "completion_window must be '24h'", param="completion_window")
    metadata = body.metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise CompatError(400, "metadata holds at most 16 pairs (keys <= 64, values <= 512 "
                          "characters)", param="metadata")  # fmt: skip
    priority = metadata.get("llmq_priority", "default")
    if priority not in PRIORITIES:
        raise CompatError(400, "metadata.llmq_priority must be high, default or low",
                          param="metadata")  # fmt: skip
    source = _uploaded(body.input_file_id, engine, who, with_content=True)
    if source["purpose"] != "batch":
        raise CompatError(400, "the input file must have purpose 'batch'", param="input_file_id")
    parsed = fmt.parse_batch_file(
        bytes(source["content"]), body.endpoint, models.resolve, settings.max_batch_items,
        admission.chat_ingest,
    )  # fmt: skip
    record = store.CompatBatchRecord(
        api="openai", input_file_id=body.input_file_id, endpoint=body.endpoint,
        completion_window=body.completion_window, meta=metadata,
        model=next(iter(parsed.models)).partition(":")[2] if len(parsed.models) == 1 else None,
        errors=parsed.errors or None,
    )  # fmt: skip
    record_id = admission.admit_compat_batch(who, record, priority, parsed.items)
    created = store.get_compat_batch(engine, who.tenant_id, "openai", record_id)
    assert created is not None
    return _batch(created, engine, who)


@router.get("/batches/{batch_id}")
def get_batch(batch_id: str, engine: EngineDep, who: CompatPrincipal) -> dict[str, Any]:
    return _batch(_record(batch_id, engine, who), engine, who)


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(
    batch_id: str, engine: EngineDep, events: EventsDep, who: CompatPrincipal
) -> dict[str, Any]:
    """Idempotent: cancelling a cancelling or cancelled batch returns it as it is."""
    record = _record(batch_id, engine, who)
    current = _batch(record, engine, who)
    if current["status"] in ("failed", "completed"):
        raise CompatError(409, f"Cannot cancel a batch with status '{current['status']}'.")
    cancel.cancel_batch(engine, events, who.tenant_id, record["batch_id"])
    return _batch(record, engine, who)


@router.get("/batches")
def list_batches(
    engine: EngineDep,
    who: CompatPrincipal,
    after: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN)] = None,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> dict[str, Any]:
    cursor = None
    if after is not None:
        cursor = parse_public_id(after, fmt.BATCH_PREFIX)
        if cursor is None:
            raise CompatError(400, f"after: {after!r} is not a batch id", param="after")
    rows, has_more = store.list_compat_batches(
        engine, who.tenant_id, "openai", limit=page_limit(limit, 20, 100), after=cursor
    )
    data = [_batch(row, engine, who) for row in rows]
    return {
        "object": "list", "data": data, "has_more": has_more,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Chat Completions, answered synchronously through the same queue and pipeline


@router.post("/chat/completions", openapi_extra=CHAT_COMPLETION_BODY)
def chat_completions(
    body: dict[str, Any],
    engine: EngineDep,
    settings: SettingsDep,
    who: CompatPrincipal,
    models: ResolverDep,
    admission: AdmissionDep,
) -> dict[str, Any]:
    try:
        item = fmt.chat_request(body, models.resolve, admission.chat_ingest)
    except FieldError as exc:
        status = 404 if exc.code == "model_not_found" else 400
        raise CompatError(status, exc.message, code=exc.code, param=exc.param) from exc
    job_id = admission.admit_chat(item, who)
    job = _wait_for_job(engine, who.tenant_id, job_id, settings.compat_sync_timeout_s)
    if job is None:
        raise CompatError(504, f"no answer within {settings.compat_sync_timeout_s:g} s; the "
                          f"request continues as llmq job {job_id}", kind="server_error",
                          code="timeout")  # fmt: skip
    if job["status"] != "succeeded":
        status, error = fmt.job_error(job["error_code"], job["error_message"])
        raise CompatError(status, error["message"], kind=error["type"], code=error["code"])
    return fmt.chat_completion(job)


def _wait_for_job(
    engine: Any, tenant_id: uuid.UUID, job_id: uuid.UUID, timeout_s: float
) -> dict[str, Any] | None:
    """The finished job, or None at the timeout. Polls Postgres (the record of truth) with a
    growing interval: the answer arrives within ~one interval of the worker's finish."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        job = store.get_job(engine, tenant_id, job_id)
        if job is not None and job["status"] in TERMINAL_STATUSES:
            return job
        if time.monotonic() + delay > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# Registered last: any other path or method under the prefix is a 404 (or a 405 naming the
# path's methods) in this API's own error shape.
@router.api_route("/{path:path}", methods=CATCH_ALL_METHODS, include_in_schema=False)
def unknown_path(path: str, request: Request) -> None:
    raise unknown_route(request, f"/openai/v1/{path}")

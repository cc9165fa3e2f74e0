"""How submissions arrive: a JSON body or a JSONL file upload for batches, and the
Idempotency-Key header that makes a retried submission return the first one's answer."""

from __future__ import annotations

import json
import re
import uuid
from typing import IO, Annotated, Any

from fastapi import Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from llmq import store
from llmq.admission.pipeline import Insert, Once
from llmq.store import Idempotency, IdempotentReplay, Principal, StoredResponse, crypto

from .errors import ApiError, json_message
from .schemas import BatchIn, BatchItem

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="a retry with the same key returns the first submission's answer",
    ),
]
MAX_LINE_ERRORS = 20
_AT_LINE_1 = re.compile(r" at line 1 column (\d+)$")
# Form fields of an upload that hold JSON rather than plain text.
JSON_FORM_FIELDS = ("params", "metadata", "chain")
FORM_FIELDS = (
    *JSON_FORM_FIELDS,
    "template",
    "priority",
    "completion_window",
    "webhook_url",
    "lane",
)


def _invalid(exc: ValidationError, prefix: str) -> RequestValidationError:
    errors = [{**e, "loc": (prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    return RequestValidationError(errors)


async def read_batch(request: Request, max_items: int) -> BatchIn:
    """A BatchIn from either content type; every problem is a 422 before anything is written."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _read_upload(request, max_items)
    raw = await request.body()
    try:
        body = BatchIn.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise _invalid(exc, "body") from None
    _check_size(len(body.items), max_items)
    return body


def _check_size(count: int, max_items: int) -> None:
    if count > max_items:
        raise ApiError(
            422, "too_many_items", f"a batch holds at most {max_items} items, got {count}"
        )


async def _read_upload(request: Request, max_items: int) -> BatchIn:
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body (400)
        raise ApiError(422, "invalid_multipart", f"body: {exc.detail}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "invalid_request", "file: upload the JSONL as a form field 'file'")
    unknown = sorted(set(form.keys()) - {"file", *FORM_FIELDS})
    if unknown:
        raise ApiError(422, "invalid_request", f"form: unknown field(s) {', '.join(unknown)}")
    fields: dict[str, Any] = {}
    for name in FORM_FIELDS:
        value = form.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        fields[name] = _form_json(name, value) if name in JSON_FORM_FIELDS else value
    items = await run_in_threadpool(parse_jsonl, upload.file, max_items)
    try:
        return BatchIn.model_validate({**fields, "items": items})
    except ValidationError as exc:
        raise _invalid(exc, "form") from None


def _form_json(name: str, value: str) -> Any:
    if name == "chain" and not value.lstrip().startswith("["):
        return [link.strip() for link in value.split(",") if link.strip()]
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_request", f"form.{name}: not valid JSON ({exc.msg})") from None


def parse_jsonl(stream: IO[bytes], max_items: int) -> list[BatchItem]:
    """Validate every line; collect errors by line number (up to MAX_LINE_ERRORS) so a user
    fixes a file in one round, and write nothing unless every line is valid."""
    items: list[BatchItem] = []
    errors: list[dict[str, Any]] = []
    first_line_of: dict[str, int] = {}  # custom_id -> the line that used it first
    count = 0
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > max_items:
            _check_size(count, max_items)
        try:
            # Without its line ending, a parse error's position is a column of this line.
            item = BatchItem.model_validate_json(raw.rstrip(b"\r\n"))
        except ValidationError as exc:
            errors.extend(_line_errors(number, exc))
        else:
            items.append(item)
            if item.custom_id is not None:
                first = first_line_of.setdefault(item.custom_id, number)
                if first != number:
                    message = f"{item.custom_id!r} is a duplicate of line {first}"
                    errors.append(_line_error(number, "custom_id", message, "duplicate"))
        if len(errors) >= MAX_LINE_ERRORS:
            break
    if errors:
        first_error = errors[0]
        field = "" if first_error["loc"] == "line" else f"{first_error['loc']}: "
        raise ApiError(
            422,
            "invalid_jsonl",
            f"line {first_error['line']}: {field}{first_error['message']}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            details=errors,
        )
    if not items:
        raise ApiError(422, "invalid_jsonl", "the file holds no items")
    return items


def _line_error(number: int, loc: str, message: str, kind: str) -> dict[str, Any]:
    return {"line": number, "loc": loc, "message": message, "type": kind}


def _line_errors(number: int, exc: ValidationError) -> list[dict[str, Any]]:
    return [
        _line_error(
            number,
            ".".join(str(p) for p in err["loc"]) or "line",
            _AT_LINE_1.sub(r" at column \1", json_message(err)),
            err["type"],
        )
        for err in exc.errors(include_url=False)
    ]


# ---------------------------------------------------------------------------------------------
# Idempotency-Key


def request_hashes(endpoint: str, body: BaseModel) -> tuple[str, ...]:
    """The request's digest to store (first), then those it may have been stored under before a
    key rotation. Keyed under LLMQ_ENCRYPTION_KEYS (crypto.digests): the body holds the
    documents, and a plain hash of it would confirm a guessed document."""
    return crypto.digests(endpoint.encode() + b"\n" + body.model_dump_json().encode())


def replay(
    stored: StoredResponse, key: str, endpoint: str, digests: tuple[str, ...]
) -> JSONResponse:
    """The first answer again, or 409 if the key was used for a different request."""
    if stored.endpoint != endpoint or stored.request_hash not in digests:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was already used for a different request "
            f"(POST /v1/{stored.endpoint} with another body); use a new key for a new submission",
        )
    return JSONResponse(
        stored.response, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"}
    )


def once_per_key(
    engine: Engine,
    who: Principal,
    key: str | None,
    endpoint: str,
    body: BaseModel,
    answer: BaseModel,
    ttl_s: float,
) -> Once[JSONResponse] | None:
    """How admission writes a submission sent with this Idempotency-Key (None: no key): the
    rows and the key in one transaction, or, for a retry, the stored response instead of a
    write. `answer` is the 202 body minus its id."""
    if key is None:
        return None

    def once(insert: Insert) -> uuid.UUID | JSONResponse:
        digests = request_hashes(endpoint, body)
        stored = store.find_idempotent(engine, who.tenant_id, key, ttl_s)
        if stored is not None:
            return replay(stored, key, endpoint, digests)
        idem = Idempotency(key, endpoint, digests[0], 202, answer.model_dump(mode="json"), ttl_s)
        try:
            return insert(idem)
        except IdempotentReplay as race:  # a concurrent request with the key committed first
            return replay(race.stored, key, endpoint, digests)

    return once

"""The FAKE provider's Batch APIs: OpenAI ``files`` + ``batches`` and Anthropic Message Batches.

A test double, registered on the fake provider's app by :func:`routes`. It speaks the wire
formats the official SDKs parse, so ``client.files.create`` / ``client.batches.*`` (openai) and
``client.messages.batches.*`` (anthropic) run their real code against it.

Each item is answered when its batch is created, by the same function that answers the fake's
synchronous endpoint (same text, same usage), so a batch-vs-sync comparison is exact. Scripted
faults of the sync script apply to items too: ``status`` rules error the item, ``reply`` and
``refusal`` rules shape its answer; ``latency``, ``hang`` and ``malformed`` do not apply.

Time is scripted with :class:`BatchScript` (``POST /_fake/batches/script``, fields given replace
the current ones): a batch ends ``turnaround_s`` after creation; its items finish evenly over
that time (item ``i`` of ``n`` at ``(i + 1) / n * turnaround_s``), so a cancel keeps the items
finished before it and reports the rest as cancelled; a cancelled batch stays ``cancelling``
(OpenAI) / ``canceling`` (Anthropic) for ``cancel_s`` before it ends. ``errored_ids`` /
``expired_ids`` make those custom ids error / expire in every batch created while they are
scripted; ``fail_next`` / ``expire_next`` make the next N created batches (of either API) fail
as a whole / expire with no item done. An OpenAI batch that fails ends ``failed`` with
``errors``; Anthropic has no failed batch state, so a failing Anthropic batch ends with every
item ``errored``.

``POST /_fake/batches/advance`` ``{"seconds": s}`` moves the batches' clock forward, so a test
reaches "half done" or "ended" without sleeping. Lists are newest first. ``/_fake/stats`` gains
``batches_created``, ``batches_cancelled`` and ``batch_items`` (per API); batch items are not
counted as synchronous ``requests``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ANTHROPIC_MAX_ITEMS", "OPENAI_MAX_ITEMS", "BatchScript", "FakeBatchState", "routes"]

ApiName = Literal["openai", "anthropic"]
Answer = Callable[[ApiName, Any], tuple[int, dict[str, Any]]]
"""(api, request body) -> (HTTP status, JSON body) exactly as the sync endpoint answers."""

OPENAI_MAX_ITEMS = 50_000
ANTHROPIC_MAX_ITEMS = 100_000
OPENAI_MAX_FILE_BYTES = 200 * 1024**2
_CHAT_ENDPOINT = "/v1/chat/completions"
_LIST_LIMIT_MAX = {"openai": 100, "anthropic": 1000}
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
_FAILED_MESSAGE = "The batch failed (scripted by the fake provider)."


class BatchScript(BaseModel):
    """How the fake's upstream batches behave; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    turnaround_s: float = Field(default=0.0, ge=0)
    errored_ids: list[str] = Field(default_factory=list)
    expired_ids: list[str] = Field(default_factory=list)
    fail_next: int = Field(default=0, ge=0)
    expire_next: int = Field(default=0, ge=0)
    cancel_s: float = Field(default=0.0, ge=0)


Outcome = Literal["succeeded", "errored", "expired", "cancelled"]


@dataclass
class _Item:
    custom_id: str
    status: int  # the sync answer's HTTP status
    body: dict[str, Any]  # the sync answer's JSON body
    outcome: Outcome  # what it ends as unless the batch is cancelled before it is done
    done_after_s: float  # seconds after creation at which the item is done


@dataclass
class _Batch:
    api: ApiName
    id: str
    created_at: float
    turnaround_s: float
    items: list[_Item]
    fate: Literal["normal", "fail", "expire"] = "normal"
    cancelled_at: float | None = None
    cancel_s: float = 0.0  # how long it stays cancelling/canceling once cancelled
    # OpenAI only.
    input_file_id: str = ""
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def ends_at(self) -> float:
        return self.created_at + self.turnaround_s

    def ended(self, now: float) -> bool:
        if self.cancelled_at is not None:
            return now >= self.cancelled_at + self.cancel_s
        # A batch that fails (scripted, or its input file invalid) fails at once.
        return self.fate == "fail" or bool(self.errors) or now >= self.ends_at

    def outcome(self, item: _Item) -> Outcome:
        """The item's outcome once the batch has ended."""
        if self.fate == "fail":
            return "errored"
        if self.cancelled_at is not None and not (
            self.fate == "normal" and self.created_at + item.done_after_s <= self.cancelled_at
        ):
            return "cancelled"
        if self.fate == "expire":
            return "expired"
        return item.outcome

    def done_count(self, now: float) -> int:
        if self.fate != "normal":
            return 0
        limit = now if self.cancelled_at is None else min(now, self.cancelled_at)
        return sum(1 for item in self.items if self.created_at + item.done_after_s <= limit)


@dataclass
class _File:
    id: str
    content: bytes
    filename: str
    purpose: str
    created_at: int


class FakeBatchState:
    """Batches, files, script and counters of one fake provider (used on its event loop only)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.script = BatchScript()
        self.batches: dict[str, _Batch] = {}
        self.files: dict[str, _File] = {}
        self.created: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.clock_offset_s = 0.0  # moved by /_fake/batches/advance: tests never sleep

    def now(self) -> float:
        return time.time() + self.clock_offset_s

    def reset_stats(self) -> None:
        self.created.clear()
        self.cancelled.clear()
        self.items.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "batches_created": {api: self.created.get(api, 0) for api in ("openai", "anthropic")},
            "batches_cancelled": {
                api: self.cancelled.get(api, 0) for api in ("openai", "anthropic")
            },
            "batch_items": {api: self.items.get(api, 0) for api in ("openai", "anthropic")},
        }

    def update_script(self, changes: BatchScript) -> None:
        self.script = self.script.model_copy(
            update={name: getattr(changes, name) for name in changes.model_fields_set}
        )

    def create_batch(self, api: ApiName, requests: list[tuple[str, Any]], **extra: Any) -> _Batch:
        """Answer every (custom_id, body) now and record the batch; consumes fail/expire_next."""
        script = self.script
        fate: Literal["normal", "fail", "expire"] = "normal"
        if script.fail_next:
            fate, script.fail_next = "fail", script.fail_next - 1
        elif script.expire_next:
            fate, script.expire_next = "expire", script.expire_next - 1
        errored, expired = set(script.errored_ids), set(script.expired_ids)
        count = len(requests)
        items = []
        for index, (custom_id, body) in enumerate(requests):
            status, payload = self.answer(api, body)
            outcome: Outcome = "succeeded" if status == 200 else "errored"
            if custom_id in expired:
                outcome = "expired"
            elif custom_id in errored:
                outcome = "errored"
                status, payload = 500, _scripted_error(api)
            done = script.turnaround_s * (index + 1) / count
            items.append(_Item(custom_id, status, payload, outcome, done))
        prefix = "batch_fake" if api == "openai" else "msgbatch_fake"
        batch = _Batch(
            api=api,
            id=f"{prefix}{uuid.uuid4().hex[:24]}",
            created_at=self.now(),
            turnaround_s=script.turnaround_s,
            items=items,
            fate=fate,
            **extra,
        )
        self.batches[batch.id] = batch
        self.created[api] = self.created.get(api, 0) + 1
        self.items[api] = self.items.get(api, 0) + count
        return batch

    def cancel(self, batch: _Batch, now: float) -> bool:
        """Cancel a running batch; False if it had already ended or been cancelled."""
        if batch.cancelled_at is not None or batch.ended(now):
            return False
        batch.cancelled_at, batch.cancel_s = now, self.script.cancel_s
        self.cancelled[batch.api] = self.cancelled.get(batch.api, 0) + 1
        return True

    def add_file(self, content: bytes, filename: str, purpose: str) -> _File:
        file = _File(
            f"file-fake{uuid.uuid4().hex[:24]}", content, filename, purpose, int(self.now())
        )
        self.files[file.id] = file
        return file


def _scripted_error(api: ApiName) -> dict[str, Any]:
    message = "Scripted item error (fake provider)."
    if api == "openai":
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return {"type": "error", "error": {"type": "api_error", "message": message}}


def _state(request: Request) -> FakeBatchState:
    state: FakeBatchState = request.app.state.fake.batches
    return state


def _json(payload: Any, status: int = 200) -> Response:
    return JSONResponse(payload, status)


# --------------------------------------------------------------------------- OpenAI


def _openai_error(status: int, message: str, param: str | None = None) -> Response:
    err_type = "invalid_request_error"
    return _json(
        {"error": {"message": message, "type": err_type, "param": param, "code": None}}, status
    )


def _file_object(file: _File) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": len(file.content),
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


async def _files_create(request: Request) -> Response:
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        return _openai_error(400, "Missing required parameter: 'file'.", "file")
    if purpose not in ("batch", "user_data", "fine-tune", "assistants", "vision"):
        return _openai_error(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
    content = await upload.read()
    file = _state(request).add_file(content, upload.filename or "upload", str(purpose))
    return _json(_file_object(file))


def _find_file(request: Request) -> _File | Response:
    file = _state(request).files.get(request.path_params["file_id"])
    if file is None:
        return _openai_error(404, f"No such File object: {request.path_params['file_id']}", "id")
    return file


async def _files_retrieve(request: Request) -> Response:
    file = _find_file(request)
    return file if isinstance(file, Response) else _json(_file_object(file))


async def _files_content(request: Request) -> Response:
    file = _find_file(request)
    if isinstance(file, Response):
        return file
    return Response(file.content, media_type="application/octet-stream")


def _parse_openai_input(
    content: bytes, endpoint: str
) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """(custom_id, body) per line of an input file, or the validation errors OpenAI reports."""
    requests: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(line: int, code: str, message: str) -> None:
        errors.append({"code": code, "line": line, "message": message, "param": None})

    if len(content) > OPENAI_MAX_FILE_BYTES:
        error(0, "file_too_large", f"The input file exceeds {OPENAI_MAX_FILE_BYTES} bytes.")
        return requests, errors
    for number, raw in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            error(number, "missing_required_parameter", "Missing required parameter: 'custom_id'.")
            continue
        if line.get("url") != endpoint or line.get("method") != "POST":
            error(number, "mismatched_endpoint", f"The line's url/method must be POST {endpoint}.")
            continue
        if line["custom_id"] in seen:
            error(number, "duplicate_custom_id", "The custom_id is used more than once.")
            continue
        seen.add(line["custom_id"])
        requests.append((line["custom_id"], line.get("body")))
    if not requests and not errors:
        error(0, "empty_file", "The input file has no requests.")
    if len(requests) > OPENAI_MAX_ITEMS:
        error(0, "too_many_requests", f"A batch may have at most {OPENAI_MAX_ITEMS} requests.")
    return requests, errors


def _openai_status(batch: _Batch, now: float) -> str:
    if batch.fate == "fail" or batch.errors:
        return "failed"
    if batch.cancelled_at is not None:
        return "cancelled" if batch.ended(now) else "cancelling"
    if now < batch.ends_at:
        return "in_progress"
    return "expired" if batch.fate == "expire" else "completed"


def _openai_result_line(batch: _Batch, item: _Item) -> tuple[bool, dict[str, Any]]:
    """(goes to the output file, the line) for an item of an ended batch."""
    line: dict[str, Any] = {
        "id": f"batch_req_{uuid.uuid5(uuid.NAMESPACE_URL, batch.id + item.custom_id).hex[:24]}",
        "custom_id": item.custom_id,
        "response": None,
        "error": None,
    }
    outcome = batch.outcome(item)
    if outcome in ("succeeded", "errored"):
        line["response"] = {
            "status_code": item.status,
            "request_id": f"req_fake{uuid.uuid4().hex[:24]}",
            "body": item.body,
        }
    elif outcome == "expired":
        line["error"] = {"code": "batch_expired", "message": _EXPIRED_MESSAGE}
    else:
        line["error"] = {"code": "batch_cancelled", "message": _CANCELLED_MESSAGE}
    return outcome == "succeeded", line


def _finish_openai(state: FakeBatchState, batch: _Batch) -> None:
    """Write the output and error files of an ended batch, once."""
    if batch.output_file_id is not None or batch.error_file_id is not None:
        return
    if batch.fate == "fail" or batch.errors:
        return
    output: list[str] = []
    errors: list[str] = []
    for item in batch.items:
        ok, line = _openai_result_line(batch, item)
        (output if ok else errors).append(json.dumps(line, separators=(",", ":")))
    if output:
        content = ("\n".join(output) + "\n").encode()
        batch.output_file_id = state.add_file(
            content, f"{batch.id}_output.jsonl", "batch_output"
        ).id
    if errors:
        content = ("\n".join(errors) + "\n").encode()
        batch.error_file_id = state.add_file(content, f"{batch.id}_error.jsonl", "batch_output").id


def _openai_batch(
    state: FakeBatchState, batch: _Batch, status: str | None = None
) -> dict[str, Any]:
    now = state.now()
    real_status = _openai_status(batch, now)
    ended = real_status in ("failed", "cancelled", "expired", "completed")
    if ended:
        _finish_openai(state, batch)
    done = batch.done_count(now)
    if ended:
        succeeded = sum(1 for item in batch.items if batch.outcome(item) == "succeeded")
        counts = {
            "total": len(batch.items),
            "completed": succeeded,
            "failed": len(batch.items) - succeeded,
        }
    else:
        failed = sum(1 for item in batch.items[:done] if item.outcome != "succeeded")
        counts = {"total": len(batch.items), "completed": done - failed, "failed": failed}
    end_stamp = int(batch.cancelled_at + batch.cancel_s if batch.cancelled_at else batch.ends_at)
    errors = batch.errors or (
        [{"code": "batch_failed", "line": None, "message": _FAILED_MESSAGE, "param": None}]
        if batch.fate == "fail"
        else []
    )
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": _CHAT_ENDPOINT,
        "model": None,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": status or real_status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at),
        "in_progress_at": int(batch.created_at),
        "expires_at": int(batch.created_at) + 24 * 3600,
        "finalizing_at": end_stamp if ended else None,
        "completed_at": end_stamp if real_status == "completed" else None,
        "failed_at": int(batch.created_at) if real_status == "failed" else None,
        "expired_at": end_stamp if real_status == "expired" else None,
        "cancelling_at": int(batch.cancelled_at) if batch.cancelled_at else None,
        "cancelled_at": end_stamp if real_status == "cancelled" else None,
        "request_counts": counts,
        "metadata": batch.metadata,
    }


async def _batches_create(request: Request) -> Response:
    state = _state(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _openai_error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return _openai_error(400, "We could not parse the JSON body of your request.")
    endpoint = body.get("endpoint")
    if endpoint != _CHAT_ENDPOINT:
        return _openai_error(400, f"The fake supports only endpoint {_CHAT_ENDPOINT}.", "endpoint")
    if body.get("completion_window") != "24h":
        return _openai_error(400, "Invalid 'completion_window': only '24h'.", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        return _openai_error(400, "Invalid 'metadata': expected string values.", "metadata")
    file = state.files.get(str(body.get("input_file_id")))
    if file is None:
        return _openai_error(
            400, f"No such File object: {body.get('input_file_id')}", "input_file_id"
        )
    if file.purpose != "batch":
        return _openai_error(
            400, "The input file must be uploaded with purpose 'batch'.", "input_file_id"
        )
    requests, errors = _parse_openai_input(file.content, endpoint)
    batch = state.create_batch(
        "openai",
        [] if errors else requests,
        input_file_id=file.id,
        metadata=metadata,
        errors=errors,
    )
    return _json(_openai_batch(state, batch, status="validating"))


def _find_batch(request: Request, api: ApiName) -> _Batch | Response:
    batch_id = request.path_params["batch_id"]
    batch = _state(request).batches.get(batch_id)
    if batch is None or batch.api != api:
        if api == "openai":
            return _openai_error(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return _anthropic_error(404, "not_found_error", f"Message batch {batch_id} not found.")
    return batch


async def _batches_retrieve(request: Request) -> Response:
    batch = _find_batch(request, "openai")
    if isinstance(batch, Response):
        return batch
    return _json(_openai_batch(_state(request), batch))


async def _batches_cancel(request: Request) -> Response:
    state = _state(request)
    batch = _find_batch(request, "openai")
    if isinstance(batch, Response):
        return batch
    now = state.now()
    if state.cancel(batch, now):
        return _json(_openai_batch(state, batch, status="cancelling"))
    status = _openai_status(batch, now)
    if status in ("cancelling", "cancelled"):
        return _json(_openai_batch(state, batch))
    return _openai_error(409, f"Cannot cancel a batch with status '{status}'.")


def _page(request: Request, api: ApiName, after_key: str) -> tuple[list[_Batch], bool] | Response:
    """Batches of `api`, newest first, after the cursor, cut to the page's limit."""
    batches = [b for b in reversed(_state(request).batches.values()) if b.api == api]
    params = request.query_params
    try:
        limit = int(params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= _LIST_LIMIT_MAX[api]:
        message = f"limit must be between 1 and {_LIST_LIMIT_MAX[api]}"
        if api == "openai":
            return _openai_error(400, message, "limit")
        return _anthropic_error(400, "invalid_request_error", message)
    after = params.get(after_key)
    if after:
        ids = [b.id for b in batches]
        batches = batches[ids.index(after) + 1 :] if after in ids else []
    before = params.get("before_id") if api == "anthropic" else None
    if before:
        ids = [b.id for b in batches]
        batches = batches[: ids.index(before)] if before in ids else []
        batches = batches[-limit:]
        return batches, False
    return batches[:limit], len(batches) > limit


async def _batches_list(request: Request) -> Response:
    state = _state(request)
    page = _page(request, "openai", "after")
    if isinstance(page, Response):
        return page
    batches, has_more = page
    return _json(
        {
            "object": "list",
            "data": [_openai_batch(state, b) for b in batches],
            "first_id": batches[0].id if batches else None,
            "last_id": batches[-1].id if batches else None,
            "has_more": has_more,
        }
    )


# --------------------------------------------------------------------------- Anthropic


def _anthropic_error(status: int, err_type: str, message: str) -> Response:
    payload = {
        "type": "error",
        "error": {"type": err_type, "message": message},
        "request_id": f"req_fake{uuid.uuid4().hex[:24]}",
    }
    return _json(payload, status)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


def _anthropic_batch(request: Request, batch: _Batch, status: str | None = None) -> dict[str, Any]:
    now = _state(request).now()
    ended = batch.ended(now)
    counts = {
        "processing": len(batch.items),
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    if ended:
        counts["processing"] = 0
        for item in batch.items:
            outcome = batch.outcome(item)
            counts["canceled" if outcome == "cancelled" else outcome] += 1
    ended_at = batch.created_at if batch.fate == "fail" else batch.ends_at
    if batch.cancelled_at is not None:
        ended_at = batch.cancelled_at + batch.cancel_s
    base = str(request.base_url).rstrip("/")
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status
        or ("ended" if ended else "canceling" if batch.cancelled_at else "in_progress"),
        "request_counts": counts,
        "ended_at": _iso(ended_at) if ended else None,
        "created_at": _iso(batch.created_at),
        "expires_at": _iso(batch.created_at + 24 * 3600),
        "archived_at": None,
        "cancel_initiated_at": _iso(batch.cancelled_at) if batch.cancelled_at else None,
        # The SDK fetches results from this absolute URL, so it points back at this server.
        "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


_CUSTOM_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


async def _messages_batches_create(request: Request) -> Response:
    state = _state(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _anthropic_error(400, "invalid_request_error", "Invalid JSON body.")
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return _anthropic_error(400, "invalid_request_error", "requests: Field required")
    if len(requests) > ANTHROPIC_MAX_ITEMS:
        message = f"requests: at most {ANTHROPIC_MAX_ITEMS} requests per batch"
        return _anthropic_error(400, "invalid_request_error", message)
    seen: set[str] = set()
    parsed: list[tuple[str, Any]] = []
    for index, entry in enumerate(requests):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if (
            not isinstance(custom_id, str)
            or not 1 <= len(custom_id) <= 64
            or not set(custom_id) <= _CUSTOM_ID_CHARS
        ):
            message = f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
            return _anthropic_error(400, "invalid_request_error", message)
        if custom_id in seen:
            message = f"requests.{index}.custom_id: duplicate custom_id {custom_id!r}"
            return _anthropic_error(400, "invalid_request_error", message)
        seen.add(custom_id)
        parsed.append((custom_id, entry.get("params")))
    batch = state.create_batch("anthropic", parsed)
    return _json(_anthropic_batch(request, batch, status="in_progress"))


async def _messages_batches_retrieve(request: Request) -> Response:
    batch = _find_batch(request, "anthropic")
    if isinstance(batch, Response):
        return batch
    return _json(_anthropic_batch(request, batch))


async def _messages_batches_cancel(request: Request) -> Response:
    batch = _find_batch(request, "anthropic")
    if isinstance(batch, Response):
        return batch
    if _state(request).cancel(batch, _state(request).now()):
        return _json(_anthropic_batch(request, batch, status="canceling"))
    return _json(_anthropic_batch(request, batch))


def _anthropic_result(batch: _Batch, item: _Item) -> dict[str, Any]:
    outcome = batch.outcome(item)
    result: dict[str, Any]
    if outcome == "succeeded":
        result = {"type": "succeeded", "message": item.body}
    elif outcome == "errored":
        error = item.body if batch.fate == "normal" else None
        if error is None or error.get("type") != "error":
            error = {"type": "error", "error": {"type": "api_error", "message": _FAILED_MESSAGE}}
        result = {"type": "errored", "error": {"type": "error", "error": error["error"]}}
    elif outcome == "expired":
        result = {"type": "expired"}
    else:
        result = {"type": "canceled"}
    return {"custom_id": item.custom_id, "result": result}


async def _messages_batches_results(request: Request) -> Response:
    batch = _find_batch(request, "anthropic")
    if isinstance(batch, Response):
        return batch
    if not batch.ended(_state(request).now()):
        message = f"Message batch {batch.id} has not yet ended; results are not available."
        return _anthropic_error(404, "not_found_error", message)
    lines = [
        json.dumps(_anthropic_result(batch, item), separators=(",", ":")) for item in batch.items
    ]
    return Response(("\n".join(lines) + "\n").encode(), media_type="application/binary")


async def _messages_batches_list(request: Request) -> Response:
    page = _page(request, "anthropic", "after_id")
    if isinstance(page, Response):
        return page
    batches, has_more = page
    return _json(
        {
            "data": [_anthropic_batch(request, b) for b in batches],
            "has_more": has_more,
            "first_id": batches[0].id if batches else None,
            "last_id": batches[-1].id if batches else None,
        }
    )


# --------------------------------------------------------------------------- control


def _invalid(exc: ValidationError) -> Response:
    # Without the input: a body that is not JSON at all is bytes, which JSON cannot carry.
    return _json({"ok": False, "errors": exc.errors(include_url=False, include_input=False)}, 422)


async def _get_script(request: Request) -> Response:
    return _json(_state(request).script.model_dump(mode="json"))


async def _post_script(request: Request) -> Response:
    try:
        changes = BatchScript.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(exc)
    state = _state(request)
    state.update_script(changes)
    return _json({"ok": True, "script": state.script.model_dump(mode="json")})


class _Advance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0)


async def _advance(request: Request) -> Response:
    try:
        advance = _Advance.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(exc)
    state = _state(request)
    state.clock_offset_s += advance.seconds
    return _json({"ok": True, "clock_offset_s": state.clock_offset_s})


def routes() -> list[Route]:
    """The batch endpoints; the app's ``state.fake.batches`` must be a :class:`FakeBatchState`."""
    return [
        Route("/v1/files", _files_create, methods=["POST"]),
        Route("/v1/files/{file_id}", _files_retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}/content", _files_content, methods=["GET"]),
        Route("/v1/batches", _batches_create, methods=["POST"]),
        Route("/v1/batches", _batches_list, methods=["GET"]),
        Route("/v1/batches/{batch_id}", _batches_retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", _batches_cancel, methods=["POST"]),
        Route("/v1/messages/batches", _messages_batches_create, methods=["POST"]),
        Route("/v1/messages/batches", _messages_batches_list, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", _messages_batches_retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", _messages_batches_cancel, methods=["POST"]),
        Route(
            "/v1/messages/batches/{batch_id}/results", _messages_batches_results, methods=["GET"]
        ),
        Route("/_fake/batches/script", _get_script, methods=["GET"]),
        Route("/_fake/batches/script", _post_script, methods=["POST"]),
        Route("/_fake/batches/advance", _advance, methods=["POST"]),
    ]

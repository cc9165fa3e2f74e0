"""The OpenAI Files / Batch / Chat Completions wire formats (as the `openai` SDK parses them)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from llmq.chat import Conversation
from llmq.execution.output_review import ACCEPT_TRUNCATION, finish_reason
from llmq.store import NewJob

from .batch_file import FINDINGS_KEY
from .common import (
    MAX_TOKENS_LIMIT,
    ChatIngest,
    FieldError,
    check_number,
    public_id,
    text_of,
    unix,
)

BATCH_PREFIX = "batch_"
FILE_PREFIX = "file-"
OUTPUT_FILE_PREFIX = "file-output-"  # a batch's results, rendered from its jobs on demand
ERROR_FILE_PREFIX = "file-errors-"
CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_REPORTED_ERRORS = 100

# Keys a chat request may carry: the ones we honour, and ones that do not change the answer.
_HONOURED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "n",
             "stream"}  # fmt: skip
_IGNORED = {"user", "metadata", "store", "seed", "service_tier", "stream_options"}


def chat_request(
    body: Any, resolve: Callable[[object, str], str], ingest: ChatIngest, prefix: str = ""
) -> NewJob:
    """A Chat Completions request body -> a chat job, checked and redacted by `ingest` (raises
    FieldError)."""
    if not isinstance(body, dict):
        raise FieldError(
            "invalid_request", prefix.rstrip(".") or None, "the body must be an object"
        )
    for key in body:
        if key not in _HONOURED and key not in _IGNORED:
            raise FieldError(
                "unsupported_parameter", f"{prefix}{key}", f"'{key}' is not supported by llmq"
            )
    link = resolve(body.get("model"), f"{prefix}model")
    if body.get("stream"):
        raise FieldError("unsupported_parameter", f"{prefix}stream", "streaming is not supported")
    if body.get("n") not in (None, 1):
        raise FieldError("unsupported_parameter", f"{prefix}n", "only n=1 is supported")
    for key in ("max_tokens", "max_completion_tokens"):
        check_number(body, key, f"{prefix}{key}", low=1, high=MAX_TOKENS_LIMIT, integer=True)
    check_number(body, "temperature", f"{prefix}temperature", low=0, high=2, integer=False)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FieldError(
            "invalid_request", f"{prefix}messages", "'messages' must be a non-empty list"
        )
    system: list[str] = []
    turns: list[dict[str, str]] = []
    # The parameter each stored text came from (the joined system prompt: its first message).
    system_param: list[str] = []
    turn_params: list[str] = []
    for index, message in enumerate(messages):
        where = f"{prefix}messages[{index}]"
        if not isinstance(message, dict):
            raise FieldError("invalid_request", where, "each message must be an object")
        role = message.get("role")
        text = text_of(message.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
            system_param = system_param or [f"{where}.content"]
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": text})
            turn_params.append(f"{where}.content")
        else:
            raise FieldError(
                "unsupported_parameter", f"{where}.role", f"role {role!r} is not supported"
            )
    if not turns:
        raise FieldError("invalid_request", f"{prefix}messages", "no user or assistant message")
    params: dict[str, Any] = {"model": link, ACCEPT_TRUNCATION: True}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if body.get("temperature") is not None:
        params["temperature"] = body["temperature"]
    conversation = Conversation(system="\n\n".join(system) or None, messages=turns)
    stored, findings = ingest(
        conversation, (system_param if conversation.system is not None else []) + turn_params
    )
    return NewJob(input=stored, params=params, guardrails=findings)


@dataclass
class ParsedFile:
    items: list[NewJob] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)


def parse_batch_file(
    content: bytes,
    endpoint: str,
    resolve: Callable[[object, str], str],
    max_items: int,
    ingest: ChatIngest,
) -> ParsedFile:
    """Validate a batch input file line by line, as OpenAI does before a batch starts: any
    error fails the whole batch, reported as errors.data[{code, line, message, param}]."""
    parsed = ParsedFile()

    def error(line: int | None, code: str, message: str, param: str | None = None) -> None:
        if len(parsed.errors) < MAX_REPORTED_ERRORS:
            parsed.errors.append({"code": code, "line": line, "message": message, "param": param})

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        error(None, "invalid_file_format", "the file is not UTF-8 text")
        return parsed
    seen: set[str] = set()
    lines = [(n, raw) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not lines:
        error(None, "empty_file", "the input file contains no requests")
    if len(lines) > max_items:
        error(None, "too_many_requests", f"a batch holds at most {max_items} requests")
        return parsed
    for number, raw in lines:
        try:
            request = json.loads(raw)
        except json.JSONDecodeError:
            error(number, "invalid_json_line", "this line is not valid JSON")
            continue
        if not isinstance(request, dict):
            error(number, "invalid_json_line", "each line must be a JSON object")
            continue
        # Findings of the redaction at upload (llmq/compat/batch_file.py), kept with the line.
        uploaded = request.pop(FINDINGS_KEY, None) or []
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 200:
            error(number, "invalid_custom_id", "custom_id must be a string of 1-200 characters",
                  "custom_id")  # fmt: skip
            continue
        if custom_id in seen:
            error(number, "duplicate_custom_id", f"custom_id {custom_id!r} is not unique",
                  "custom_id")  # fmt: skip
            continue
        seen.add(custom_id)
        if request.get("method") != "POST":
            error(number, "invalid_method", "method must be 'POST'", "method")
            continue
        if request.get("url") != endpoint:
            error(number, "mismatched_url", f"url must match the batch's endpoint {endpoint!r}",
                  "url")  # fmt: skip
            continue
        try:
            item = chat_request(request.get("body"), resolve, ingest, prefix="body.")
        except FieldError as exc:
            error(number, exc.code, exc.message, exc.param)
            continue
        parsed.models.add(str(item.params["model"]) if item.params else "")
        parsed.items.append(NewJob(input=item.input, custom_id=custom_id, params=item.params,
                                   guardrails=[*uploaded, *(item.guardrails or [])]))  # fmt: skip
    return parsed


# ---------------------------------------------------------------------------------------------
# Objects


def file_object(
    file_id: str, filename: str, purpose: str, size: int, created_at: Any
) -> dict[str, Any]:
    return {
        "id": file_id, "object": "file", "bytes": size, "created_at": unix(created_at),
        "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
        "status_details": None,
    }  # fmt: skip


def batch_object(record: dict[str, Any], native: dict[str, Any] | None) -> dict[str, Any]:
    """A Batch object from the compat record and the native batch's live counts."""
    created = record["created_at"]
    body: dict[str, Any] = {
        "id": public_id(BATCH_PREFIX, record["id"]), "object": "batch",
        "endpoint": record["endpoint"], "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"], "created_at": unix(created),
        "expires_at": unix(created + timedelta(hours=24)), "metadata": record["metadata"] or None,
        "model": record["model"], "errors": None, "output_file_id": None, "error_file_id": None,
        "in_progress_at": None, "finalizing_at": None, "completed_at": None, "failed_at": None,
        "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None,
    }  # fmt: skip
    if native is None:  # failed validation: it never ran
        body.update(
            status="failed",
            failed_at=unix(created),
            errors={"object": "list", "data": record["errors"] or []},
        )
        return body
    counts = native["counts"]
    succeeded = counts["succeeded"]
    unsuccessful = counts["failed"] + counts["blocked"] + counts["cancelled"]
    status = native["status"]  # in_progress | completed | cancelling | cancelled
    body.update(
        status=status,
        in_progress_at=unix(created),
        request_counts={
            "total": native["item_count"], "completed": succeeded, "failed": unsuccessful,
        },
        usage={
            "input_tokens": native["input_tokens"], "output_tokens": native["output_tokens"],
            "total_tokens": native["input_tokens"] + native["output_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    )  # fmt: skip
    # Results are readable as soon as they exist (partial while running or after a cancel).
    if succeeded:
        body["output_file_id"] = public_id(OUTPUT_FILE_PREFIX, record["id"])
    if unsuccessful:
        body["error_file_id"] = public_id(ERROR_FILE_PREFIX, record["id"])
    if native["cancelled_at"] is not None:
        body["cancelling_at"] = unix(native["cancelled_at"])
        if status == "cancelled":
            body["cancelled_at"] = unix(native["finished_at"] or native["cancelled_at"])
    elif status == "completed":
        body["finalizing_at"] = body["completed_at"] = unix(native["finished_at"])
    return body


def chat_completion(job: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completion of a succeeded job (a row of get_job or iter_batch_results)."""
    input_tokens, output_tokens = job["input_tokens"], job["output_tokens"]
    return {
        "id": public_id("chatcmpl-", job["id"]), "object": "chat.completion",
        "created": unix(job["finished_at"]), "model": job["model"] or "unknown",
        "choices": [{
            "index": 0, "finish_reason": finish_reason(job["route"]), "logprobs": None,
            "message": {"role": "assistant", "content": job["result"] or "", "refusal": None},
        }],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens},
    }  # fmt: skip


# Our job error codes -> the HTTP status and OpenAI error type a direct call would have had.
_JOB_ERRORS: dict[str, tuple[int, str]] = {
    "input_blocked": (400, "invalid_request_error"),
    "input_too_long": (400, "invalid_request_error"),
    "output_blocked": (400, "invalid_request_error"),
    "context_too_long": (400, "invalid_request_error"),
    "bad_template": (400, "invalid_request_error"),
    "model_not_found": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "deadline_exceeded": (504, "server_error"),
}


def job_error(code: str | None, message: str | None) -> tuple[int, dict[str, Any]]:
    status, kind = _JOB_ERRORS.get(code or "", (502, "server_error"))
    return status, {"message": message or "the request failed", "type": kind, "param": None,
                    "code": code}  # fmt: skip


def result_line(row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The line of one job for the output ("output") or error ("errors") file; None while it is
    still waiting or running."""
    job_id: uuid.UUID = row["id"]
    base = {"id": public_id("batch_req_", job_id), "custom_id": row["custom_id"]}
    request_id = public_id("req_", job_id)
    status = row["status"]
    if status == "succeeded":
        body = chat_completion(row)
        response = {"status_code": 200, "request_id": request_id, "body": body}
        return "output", {**base, "response": response, "error": None}
    if status == "cancelled":
        error = {"code": "batch_cancelled",
                 "message": "the batch was cancelled before this request ran"}  # fmt: skip
        return "errors", {**base, "response": None, "error": error}
    if status in ("failed", "blocked"):
        http_status, error_body = job_error(row["error_code"], row["error_message"])
        response = {"status_code": http_status, "request_id": request_id,
                    "body": {"error": error_body}}  # fmt: skip
        return "errors", {**base, "response": response, "error": None}
    return None

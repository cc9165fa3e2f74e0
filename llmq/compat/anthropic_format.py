"""The Anthropic Message Batches wire format (as the `anthropic` SDK parses it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from llmq.chat import Conversation
from llmq.execution.output_review import ACCEPT_TRUNCATION, finish_reason
from llmq.store import NewJob

from .common import MAX_TOKENS_LIMIT, ChatIngest, FieldError, check_number, public_id, text_of

BATCH_PREFIX = "msgbatch_"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000

_HONOURED = {"model", "max_tokens", "messages", "system", "temperature", "stream"}
_IGNORED = {"metadata", "service_tier"}

# Our job error codes -> Anthropic error types.
_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "unsupported_parameter": "invalid_request_error",
    "unsupported_content": "invalid_request_error",
    "input_blocked": "invalid_request_error",
    "input_too_long": "invalid_request_error",
    "output_blocked": "invalid_request_error",
    "context_too_long": "invalid_request_error",
    "bad_template": "invalid_request_error",
    "deadline_exceeded": "timeout_error",
}


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def rfc3339(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def message_params(
    params: Any, resolve: Callable[[object, str], str], ingest: ChatIngest
) -> NewJob:
    """Messages API params -> a chat job, checked and redacted by `ingest` (raises FieldError,
    reported as an errored result)."""
    if not isinstance(params, dict):
        raise FieldError("invalid_request", "params", "params must be an object")
    for key in params:
        if key not in _HONOURED and key not in _IGNORED:
            raise FieldError("unsupported_parameter", f"params.{key}",
                             f"params.{key}: not supported by llmq")  # fmt: skip
    link = resolve(params.get("model"), "params.model")
    if params.get("stream"):
        raise FieldError("unsupported_parameter", "params.stream", "streaming is not supported")
    if params.get("max_tokens") is None:
        raise FieldError("invalid_request", "params.max_tokens", "params.max_tokens: required")
    check_number(params, "max_tokens", "params.max_tokens", low=1, high=MAX_TOKENS_LIMIT,
                 integer=True)  # fmt: skip
    check_number(params, "temperature", "params.temperature", low=0, high=1, integer=False)
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FieldError("invalid_request", "params.messages",
                         "params.messages: must be a non-empty list")  # fmt: skip
    turns: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        where = f"params.messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise FieldError("invalid_request", f"{where}.role",
                             f"{where}.role: must be 'user' or 'assistant'")  # fmt: skip
        turns.append({"role": message["role"], "content": text_of(message.get("content"), where)})
    system = params.get("system")
    system_text = text_of(system, "params.system") if system is not None else None
    job_params: dict[str, Any] = {
        "model": link, "max_tokens": params["max_tokens"], ACCEPT_TRUNCATION: True,
    }  # fmt: skip
    if params.get("temperature") is not None:
        job_params["temperature"] = params["temperature"]
    conversation = Conversation(system_text or None, turns)
    texts = [f"params.messages.{index}.content" for index in range(len(turns))]
    stored, findings = ingest(
        conversation, ["params.system", *texts] if conversation.system is not None else texts
    )
    return NewJob(input=stored, params=job_params, guardrails=findings)


def parse_requests(
    requests: Any, resolve: Callable[[object, str], str], ingest: ChatIngest
) -> tuple[list[NewJob], dict[int, tuple[str, str]]]:
    """The batch's jobs and, by position, the requests that are invalid (they end `errored`).

    A malformed list or custom_id rejects the whole batch (raises FieldError): results are
    matched by custom_id, so they must be present and unique."""
    if not isinstance(requests, list) or not requests:
        raise FieldError("invalid_request", "requests", "requests: must be a non-empty list")
    if len(requests) > MAX_REQUESTS:
        raise FieldError("invalid_request", "requests",
                         f"requests: at most {MAX_REQUESTS} per batch")  # fmt: skip
    items: list[NewJob] = []
    rejected: dict[int, tuple[str, str]] = {}
    seen: set[str] = set()
    for index, request in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(request, dict) or set(request) - {"custom_id", "params"}:
            raise FieldError("invalid_request", where,
                             f"{where}: must be an object with custom_id and params")  # fmt: skip
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise FieldError("invalid_request", f"{where}.custom_id",
                             f"{where}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")  # fmt: skip
        if custom_id in seen:
            raise FieldError("invalid_request", f"{where}.custom_id",
                             f"{where}.custom_id: {custom_id!r} is a duplicate")  # fmt: skip
        seen.add(custom_id)
        try:
            job = message_params(request.get("params"), resolve, ingest)
        except FieldError as exc:
            rejected[index] = (exc.code, exc.message)
            job = NewJob(input="", params={})
        items.append(NewJob(input=job.input, custom_id=custom_id, params=job.params,
                            guardrails=job.guardrails))  # fmt: skip
    return items, rejected


def batch_object(
    record: dict[str, Any], native: dict[str, Any], results_path: str
) -> dict[str, Any]:
    counts = native["counts"]
    ended = native["status"] in ("completed", "cancelled")
    created: datetime = record["created_at"]
    if ended:
        processing_status = "ended"
    elif native["cancelled_at"] is not None:
        processing_status = "canceling"
    else:
        processing_status = "in_progress"
    return {
        "id": public_id(BATCH_PREFIX, record["id"]), "type": "message_batch",
        "processing_status": processing_status,
        # Unlike Anthropic's (zero until the end), these move while the batch runs.
        "request_counts": {
            "processing": counts["queued"] + counts["running"] + counts["retrying"],
            "succeeded": counts["succeeded"], "errored": counts["failed"] + counts["blocked"],
            "canceled": counts["cancelled"], "expired": 0,
        },
        "created_at": rfc3339(created), "expires_at": rfc3339(created + timedelta(hours=24)),
        "ended_at": rfc3339(native["finished_at"]) if ended else None,
        "cancel_initiated_at": rfc3339(native["cancelled_at"]), "archived_at": None,
        "results_url": results_path if ended else None,
    }  # fmt: skip


def result_line(row: dict[str, Any]) -> dict[str, Any] | None:
    """One line of the results file; None while the request still waits or runs."""
    status = row["status"]
    job_id: uuid.UUID = row["id"]
    if status == "succeeded":
        message = {
            "id": public_id("msg_", job_id), "type": "message", "role": "assistant",
            "model": row["model"] or "unknown",
            "content": [{"type": "text", "text": row["result"] or ""}],
            "stop_reason": _STOP_REASONS[finish_reason(row["route"])], "stop_sequence": None,
            "usage": {"input_tokens": row["input_tokens"],
                      "output_tokens": row["output_tokens"]},
        }  # fmt: skip
        result: dict[str, Any] = {"type": "succeeded", "message": message}
    elif status == "cancelled":
        result = {"type": "canceled"}
    elif status in ("failed", "blocked"):
        kind = _ERROR_TYPES.get(row["error_code"] or "", "api_error")
        result = {
            "type": "errored",
            "error": {"type": "error", "request_id": public_id("req_", job_id),
                      "error": {"type": kind, "message": row["error_message"] or "failed"}},
        }  # fmt: skip
    else:
        return None
    return {"custom_id": row["custom_id"], "result": result}

"""A FAKE LLM provider HTTP server for tests, benchmarks and demos.

This module is a test double. It is never part of the product's provider chain. It
serves real HTTP on a local address and speaks the wire formats that the official SDKs
parse, so the real ``openai`` and ``anthropic`` clients can be pointed at it:

* OpenAI Chat Completions: ``POST /v1/chat/completions``
  (``openai.OpenAI(base_url=server.openai_base_url)``).
* Anthropic Messages: ``POST /v1/messages``
  (``anthropic.Anthropic(base_url=server.anthropic_base_url)``).

Every completion is deterministic and says that it is fake: ``"[fake:<model>] "``
followed by the first 40 words of the last user message. Token counts are rough
(``ceil(chars / 4)``), not a real tokenizer.

Faults and latency are scripted with :class:`FakeScript` (rules are tried in order; the
first matching rule that fires wins). A ``reply`` rule returns its given ``text`` (optionally
with finish_reason ``length``), and ``prompt_contains`` limits a rule to requests whose last user
message contains a string, so a test can answer a corrective prompt differently. Control
endpoints live under ``/_fake/``:

* ``GET /_fake/health`` -> ``{"ok": true}``
* ``GET /_fake/script`` -> the current script
* ``PUT /_fake/script`` -> replace the script (resets ``first_n`` counters and the RNG)
* ``GET /_fake/stats`` -> request counters and timestamps
* ``GET /_fake/requests?model=M`` -> the last request bodies for model ``M`` (what a provider
  would have been sent: a test checks that a redacted value never left llmq)
* ``POST /_fake/reset`` -> clear the stats

The Batch APIs (OpenAI ``files``/``batches``, Anthropic ``messages/batches``) and their script
(``POST /_fake/batches/script``) live in :mod:`llmq.testing.fake_batches`.
Rate limits per model (``FakeScript.limits``, ``llmq fake-provider --rpm N --tpm M``) are
enforced with a sliding window and announced in both providers' headers (fake_limits.py).

Streaming (``stream: true``) is not supported; such requests get a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import json
import math
import random
import socket
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from llmq.errors import LlmqError
from llmq.testing import fake_embeddings
from llmq.testing.fake_batches import BatchScript, FakeBatchState
from llmq.testing.fake_batches import routes as batch_routes
from llmq.testing.fake_limits import FakeLimiter, RateLimits

__all__ = [
    "REFUSAL_TEXT",
    "FakeProviderServer",
    "FakeProviderState",
    "FakeScript",
    "FaultRule",
    "create_app",
    "load_script",
    "serve",
]

ApiName = Literal["openai", "anthropic", "embeddings"]

REFUSAL_TEXT = "I can't help with that."
"""The text of a scripted refusal."""

REPLY_WORDS = 40
"""How many words of the last user message the fake reply echoes."""

TIMESTAMP_CAP = 100_000
"""How many request timestamps ``/_fake/stats`` keeps per model (the most recent ones)."""

REQUEST_BODY_CAP = 20
"""How many request bodies ``/_fake/requests`` keeps per model (the most recent ones)."""

CLIENT_CLOSED = 499
"""Status recorded in the stats when the client went away before the answer (nginx's code)."""

_FAKE_CONTEXT_WINDOW = 128_000
_FAKE_ANTHROPIC_CONTEXT_WINDOW = 200_000


# --------------------------------------------------------------------------- script


class FaultRule(BaseModel):
    """One scripted fault. Rules are evaluated in order; the first one that fires wins."""

    model_config = ConfigDict(extra="forbid")

    api: Literal["openai", "anthropic", "embeddings", "*"] = "*"
    model: str = "*"
    """fnmatch pattern matched against the request's ``model``."""
    fault: Literal["status", "hang", "malformed", "refusal", "latency", "reply"]
    status: int = Field(default=500, ge=400, le=599)
    """For ``status``: the HTTP status of the error response."""
    retry_after: float | None = Field(default=None, ge=0)
    """For ``status``: sent as ``Retry-After`` (seconds) and ``retry-after-ms``."""
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    first_n: int | None = Field(default=None, ge=0)
    """Only the first N requests matching ``api``/``model`` are affected."""
    latency_ms: float = Field(default=0.0, ge=0)
    """For ``latency``: extra delay before the normal answer."""
    hang_s: float = Field(default=30.0, ge=0)
    """For ``hang``: how long to sleep before answering normally."""
    context_length: bool = False
    """For ``status`` 400: send the provider's context-length-exceeded error."""
    message: str | None = None
    """For ``status``: override the error message."""
    text: str = ""
    """For ``reply``: the completion text to return instead of the echo."""
    finish_reason: Literal["stop", "length"] = "stop"
    """For ``reply``: ``length`` reports the answer as cut off by max_tokens."""
    prompt_contains: str | None = None
    """Only requests whose last user message contains this text are affected."""

    def matches(self, api: ApiName, model: str, prompt: str = "") -> bool:
        if self.api != "*" and self.api != api:
            return False
        if self.prompt_contains is not None and self.prompt_contains not in prompt:
            return False
        return fnmatch.fnmatchcase(model, self.model)


class FakeScript(BaseModel):
    """The fault and latency script of a fake provider."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0)
    """Base latency applied to every completion request."""
    seed: int = 0
    """Seed of the random generator that decides probabilistic rules."""
    rules: list[FaultRule] = Field(default_factory=list)
    cached_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of each prompt reported as read from the prompt cache (OpenAI
    ``prompt_tokens_details.cached_tokens``, Anthropic ``cache_read_input_tokens``)."""
    limits: RateLimits | None = None
    """Requests/tokens per minute per model, with rate-limit headers (fake_limits.py)."""


# --------------------------------------------------------------------------- state


class FakeProviderState:
    """Script, rule counters and statistics of one fake provider.

    It is only touched from the server's event loop, so it needs no lock.
    """

    def __init__(self, script: FakeScript | None = None) -> None:
        self.script = FakeScript()
        self.rng = random.Random(0)
        self.rule_matches: list[int] = []
        self.limiter = FakeLimiter(None)
        self.set_script(script or FakeScript())
        self.requests = 0
        self.by_api: dict[str, int] = {}
        self.by_model: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        # Per model: a test that owns a model is not misled by another test's calls.
        self.timestamps_by_model: dict[str, deque[float]] = {}
        self.bodies_by_model: dict[str, deque[Any]] = {}
        self.in_flight = 0
        self.max_in_flight = 0  # requests answered at the same time, at most
        self.batches = FakeBatchState(self.answer_batch_item)

    def set_script(self, script: FakeScript) -> None:
        self.script = script
        self.rng = random.Random(script.seed)
        self.rule_matches = [0] * len(script.rules)
        self.limiter = FakeLimiter(script.limits)

    def reset_stats(self) -> None:
        self.requests = 0
        self.by_api.clear()
        self.by_model.clear()
        self.by_status.clear()
        self.timestamps_by_model.clear()
        self.bodies_by_model.clear()
        self.max_in_flight = self.in_flight
        self.batches.reset_stats()
        self.limiter.reset()

    def record_request(self, api: ApiName, model: str, body: Any = None) -> None:
        self.requests += 1
        self.bodies_by_model.setdefault(model, deque(maxlen=REQUEST_BODY_CAP)).append(body)
        self.by_api[api] = self.by_api.get(api, 0) + 1
        self.by_model[model] = self.by_model.get(model, 0) + 1
        self.timestamps_by_model.setdefault(model, deque(maxlen=TIMESTAMP_CAP)).append(time.time())

    def record_status(self, status: int) -> None:
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def choose_rule(self, api: ApiName, model: str, prompt: str = "") -> FaultRule | None:
        for index, rule in enumerate(self.script.rules):
            if not rule.matches(api, model, prompt):
                continue
            self.rule_matches[index] += 1
            if rule.first_n is not None and self.rule_matches[index] > rule.first_n:
                continue
            if rule.probability >= 1.0 or self.rng.random() < rule.probability:
                return rule
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_api": dict(self.by_api),
            "by_model": dict(self.by_model),
            "by_status": dict(self.by_status),
            "timestamps": list(heapq.merge(*self.timestamps_by_model.values())),
            "timestamps_by_model": {m: list(ts) for m, ts in self.timestamps_by_model.items()},
            "max_in_flight": self.max_in_flight,
            **self.batches.stats(),
            "limits": self.limiter.stats(),
        }

    def answer_batch_item(self, api: ApiName, body: Any) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) the sync endpoint would give `body`, for an upstream batch item.

        Latency, hang and malformed rules do not apply to a batch item; the body is kept for
        ``/_fake/requests`` but not counted as a sync request.
        """
        model = body.get("model") if isinstance(body, dict) else None
        model_name = model if isinstance(model, str) and model else "<none>"
        self.bodies_by_model.setdefault(model_name, deque(maxlen=REQUEST_BODY_CAP)).append(body)
        request_id = f"req_fake{uuid.uuid4().hex[:24]}"
        parsed = _parse_request(api, body, model_name, request_id)
        if not isinstance(parsed, _Parsed):
            return 400, parsed
        rule = self.choose_rule(api, parsed.model, parsed.last_user_text)
        if rule is not None and rule.fault == "status":
            if api == "openai":
                return rule.status, _openai_error(
                    rule.status, parsed.model, parsed.prompt_tokens, rule
                )
            return rule.status, _anthropic_error(
                rule.status, request_id, parsed.prompt_tokens, rule
            )
        refusal = rule is not None and rule.fault == "refusal"
        reply = rule if rule is not None and rule.fault == "reply" else None
        cached = int(parsed.prompt_tokens * self.script.cached_fraction)
        if api == "openai":
            return 200, _openai_completion(parsed, refusal, reply, cached)
        return 200, _anthropic_message(parsed, refusal, reply, cached)


# --------------------------------------------------------------------------- text helpers


def _approx_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _text_of(content: Any) -> str:
    """The text of an OpenAI or Anthropic message content (string or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "tool_result":
                    texts.append(_text_of(part.get("content")))
        return " ".join(t for t in texts if t)
    return ""


def _reply_text(model: str, last_user_text: str) -> str:
    words = last_user_text.split()[:REPLY_WORDS]
    body = " ".join(words) if words else "(no user text)"
    return f"[fake:{model}] {body}"


def _truncate(reply: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut ``reply`` to ``max_tokens`` rough tokens; return (text, truncated)."""
    if max_tokens is None or _approx_tokens(len(reply)) <= max_tokens:
        return reply, False
    return reply[: max_tokens * 4], True


def _retry_after_headers(rule: FaultRule) -> dict[str, str]:
    if rule.retry_after is None:
        return {}
    seconds = rule.retry_after
    text = str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))
    return {"retry-after": text, "retry-after-ms": str(round(seconds * 1000))}


# --------------------------------------------------------------------------- error bodies


def _openai_error(
    status: int, model: str, prompt_tokens: int, rule: FaultRule | None = None
) -> dict[str, Any]:
    code: str | None = None
    param: str | None = None
    if status == 400 and rule is not None and rule.context_length:
        err_type = "invalid_request_error"
        code = "context_length_exceeded"
        param = "messages"
        message = (
            f"This model's maximum context length is {_FAKE_CONTEXT_WINDOW} tokens. However, "
            f"your messages resulted in {max(prompt_tokens, _FAKE_CONTEXT_WINDOW + 1)} tokens. "
            "Please reduce the length of the messages."
        )
    elif status == 400:
        err_type, message = "invalid_request_error", "Invalid request (fake provider)."
    elif status == 401:
        err_type, code = "invalid_request_error", "invalid_api_key"
        message = "Incorrect API key provided: inval***. (fake provider)"
    elif status == 403:
        err_type, code = "invalid_request_error", "unsupported_country_region_territory"
        message = "Country, region, or territory not supported (fake provider)."
    elif status == 404:
        err_type, code = "invalid_request_error", "model_not_found"
        message = f"The model `{model}` does not exist or you do not have access to it."
    elif status == 429:
        err_type, code = "requests", "rate_limit_exceeded"
        message = (
            f"Rate limit reached for {model} in organization org-fake on requests per min "
            "(RPM): Limit 500, Used 500, Requested 1. (fake provider)"
        )
    elif status == 503:
        err_type = "server_error"
        message = "The engine is currently overloaded, please try again later. (fake provider)"
    elif status >= 500:
        err_type = "server_error"
        message = (
            "The server had an error while processing your request. Sorry about that! "
            "(fake provider)"
        )
    else:
        err_type, message = "invalid_request_error", f"Fake error {status}."
    if rule is not None and rule.message is not None:
        message = rule.message
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


_ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ANTHROPIC_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request (fake provider).",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low (fake provider).",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found (fake provider).",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "This request would exceed your rate limit (fake provider).",
    "api_error": "Internal server error (fake provider).",
    "timeout_error": "Request timed out (fake provider).",
    "overloaded_error": "Overloaded",
}


def _anthropic_error(
    status: int, request_id: str, prompt_tokens: int, rule: FaultRule | None = None
) -> dict[str, Any]:
    err_type = _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    message = _ANTHROPIC_MESSAGES[err_type]
    if status == 400 and rule is not None and rule.context_length:
        tokens = max(prompt_tokens, _FAKE_ANTHROPIC_CONTEXT_WINDOW + 1)
        message = f"prompt is too long: {tokens} tokens > {_FAKE_ANTHROPIC_CONTEXT_WINDOW} maximum"
    if rule is not None and rule.message is not None:
        message = rule.message
    return {
        "type": "error",
        "error": {"type": err_type, "message": message},
        "request_id": request_id,
    }


# --------------------------------------------------------------------------- request parsing


class _BadRequest(LlmqError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Parsed:
    """What the fake needs to know about a completion request."""

    def __init__(
        self,
        model: str,
        last_user_text: str,
        prompt_tokens: int,
        max_tokens: int | None,
        n: int = 1,
    ) -> None:
        self.model = model
        self.last_user_text = last_user_text
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n = n


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"Invalid '{key}': expected an integer >= 1.", key)
    return value


def _parse_request(
    api: ApiName, body: Any, model_name: str, request_id: str
) -> _Parsed | dict[str, Any]:
    """The request as the fake understands it, or the provider's 400 error body."""
    try:
        if not isinstance(body, dict):
            raise _BadRequest("We could not parse the JSON body of your request.")
        return _parse_openai(body) if api == "openai" else _parse_anthropic(body)
    except _BadRequest as exc:
        if api == "openai":
            payload = _openai_error(400, model_name, 0)
            payload["error"].update(message=exc.message, param=exc.param)
        else:
            payload = _anthropic_error(400, request_id, 0)
            payload["error"]["message"] = exc.message
        return payload


def _parse_openai(body: dict[str, Any]) -> _Parsed:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("Missing required parameter: 'messages'.", "messages")
    if body.get("stream"):
        raise _BadRequest("Streaming is not supported by the fake provider.", "stream")
    chars = 0
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("Invalid 'messages': expected objects.", "messages")
        text = _text_of(message.get("content"))
        chars += len(text)
        if message.get("role") == "user":
            last_user = text
    max_tokens = _positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body, "max_tokens")
    n = _positive_int(body, "n") or 1
    prompt_tokens = _approx_tokens(chars) + 3 * len(messages)
    return _Parsed(model, last_user, prompt_tokens, max_tokens, n)


def _parse_anthropic(body: dict[str, Any]) -> _Parsed:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: Field required")
    max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is None:
        raise _BadRequest("max_tokens: Field required")
    if body.get("stream"):
        raise _BadRequest("Streaming is not supported by the fake provider.")
    system_text = _text_of(body.get("system"))
    chars = len(system_text)
    count = len(messages) + (1 if system_text else 0)
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("messages: Input should be a valid dictionary")
        text = _text_of(message.get("content"))
        chars += len(text)
        if message.get("role") == "user":
            last_user = text
    prompt_tokens = _approx_tokens(chars) + 3 * count
    return _Parsed(model, last_user, prompt_tokens, max_tokens)


# --------------------------------------------------------------------------- responses


def _json(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _openai_completion(
    parsed: _Parsed, refusal: bool, reply: FaultRule | None = None, cached: int = 0
) -> dict[str, Any]:
    if refusal:
        text, truncated = REFUSAL_TEXT, False
    elif reply is not None:
        text, truncated = reply.text, reply.finish_reason == "length"
    else:
        text, truncated = _truncate(
            _reply_text(parsed.model, parsed.last_user_text), parsed.max_tokens
        )
    completion_tokens = _approx_tokens(len(text))
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": REFUSAL_TEXT if refusal else None,
                "annotations": [],
            },
            "finish_reason": "length" if truncated else "stop",
            "logprobs": None,
        }
        for i in range(parsed.n)
    ]
    total_completion = completion_tokens * parsed.n
    return {
        "id": f"chatcmpl-fake{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": parsed.prompt_tokens,
            "completion_tokens": total_completion,
            "total_tokens": parsed.prompt_tokens + total_completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": None,
    }


def _anthropic_message(
    parsed: _Parsed, refusal: bool, reply: FaultRule | None = None, cached: int = 0
) -> dict[str, Any]:
    stop_details: dict[str, Any] | None = None
    if refusal:
        text, stop_reason = REFUSAL_TEXT, "refusal"
        stop_details = {"type": "refusal", "category": None, "explanation": None}
    elif reply is not None:
        text = reply.text
        stop_reason = "max_tokens" if reply.finish_reason == "length" else "end_turn"
    else:
        text, truncated = _truncate(
            _reply_text(parsed.model, parsed.last_user_text), parsed.max_tokens
        )
        stop_reason = "max_tokens" if truncated else "end_turn"
    message: dict[str, Any] = {
        "id": f"msg_fake{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            # Anthropic reports cache reads apart from (not included in) input_tokens.
            "input_tokens": parsed.prompt_tokens - cached,
            "output_tokens": _approx_tokens(len(text)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        },
    }
    if stop_details is not None:
        message["stop_details"] = stop_details
    return message


def _malformed_body(api: ApiName, model: str) -> bytes:
    """A 200 body that is cut off mid-JSON, as a broken proxy might deliver it."""
    if api == "openai":
        head = {"id": "chatcmpl-fakemalformed", "object": "chat.completion", "model": model}
    else:
        head = {"id": "msg_fakemalformed", "type": "message", "model": model}
    return (
        json.dumps(head)[:-1] + ', "choices": [{"index": 0, "message": {"content": "[fa'
    ).encode()


# --------------------------------------------------------------------------- handlers


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _sleep(request: Request, seconds: float) -> bool:
    """Sleep without blocking; return True if the client disconnected meanwhile."""
    if seconds <= 0:
        return False
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait_for(asyncio.shield(watcher), timeout=seconds)
    except TimeoutError:
        return False
    finally:
        if not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return True


def _is_invalid_key(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    return auth.strip() == "Bearer invalid" or request.headers.get("x-api-key") == "invalid"


async def _handle(request: Request, api: ApiName) -> Response:
    state: FakeProviderState = request.app.state.fake
    request_id = f"req_fake{uuid.uuid4().hex[:24]}"
    id_header = "x-request-id" if api == "openai" else "request-id"
    headers = {id_header: request_id, "x-fake-provider": "true"}

    def error(
        status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> Response:
        state.record_status(status)
        return _json(payload, status, {**headers, **(extra or {})})

    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    model = body.get("model") if isinstance(body, dict) else None
    model_name = model if isinstance(model, str) and model else "<none>"
    state.record_request(api, model_name, body)

    if _is_invalid_key(request):
        if api == "openai":
            return error(401, _openai_error(401, model_name, 0))
        return error(401, _anthropic_error(401, request_id, 0))

    parsed = _parse_request(api, body, model_name, request_id)
    if not isinstance(parsed, _Parsed):
        return error(400, parsed)

    # Rate limits first, as a provider's gateway does: a request over them is answered at once.
    verdict = state.limiter.check(parsed.model, parsed.prompt_tokens + (parsed.max_tokens or 0))
    headers.update(verdict.headers)
    if verdict.rejected:
        if api == "openai":
            return error(429, _openai_error(429, parsed.model, parsed.prompt_tokens))
        return error(429, _anthropic_error(429, request_id, parsed.prompt_tokens))

    script = state.script
    rule = state.choose_rule(api, parsed.model, parsed.last_user_text)
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        closed = await _sleep(request, script.latency_ms / 1000)
    finally:
        state.in_flight -= 1
    if closed:
        state.record_status(CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)

    refusal = False
    reply = rule if rule is not None and rule.fault == "reply" else None
    if rule is not None:
        if rule.fault == "status":
            if api == "openai":
                payload = _openai_error(rule.status, parsed.model, parsed.prompt_tokens, rule)
            else:
                payload = _anthropic_error(rule.status, request_id, parsed.prompt_tokens, rule)
            return error(rule.status, payload, _retry_after_headers(rule))
        if rule.fault in ("hang", "latency"):
            delay = rule.hang_s if rule.fault == "hang" else rule.latency_ms / 1000
            if await _sleep(request, delay):
                state.record_status(CLIENT_CLOSED)
                return Response(status_code=CLIENT_CLOSED)
        elif rule.fault == "malformed":
            state.record_status(200)
            return Response(
                _malformed_body(api, parsed.model),
                status_code=200,
                media_type="application/json",
                headers=headers,
            )
        elif rule.fault == "refusal":
            refusal = True

    state.record_status(200)
    cached = int(parsed.prompt_tokens * script.cached_fraction)
    if api == "openai":
        return _json(_openai_completion(parsed, refusal, reply, cached), 200, headers)
    return _json(_anthropic_message(parsed, refusal, reply, cached), 200, headers)


async def _openai_chat(request: Request) -> Response:
    return await _handle(request, "openai")


async def _anthropic_messages(request: Request) -> Response:
    return await _handle(request, "anthropic")


async def _health(request: Request) -> Response:
    return JSONResponse({"ok": True, "fake": True})


async def _get_script(request: Request) -> Response:
    state: FakeProviderState = request.app.state.fake
    return JSONResponse(state.script.model_dump(mode="json"))


async def _put_script(request: Request) -> Response:
    state: FakeProviderState = request.app.state.fake
    try:
        script = FakeScript.model_validate_json(await request.body())
    except ValidationError as exc:
        return JSONResponse(
            {"ok": False, "errors": exc.errors(include_url=False, include_input=False)}, 422
        )
    state.set_script(script)
    return JSONResponse({"ok": True})


async def _get_stats(request: Request) -> Response:
    state: FakeProviderState = request.app.state.fake
    return JSONResponse(state.stats())


async def _get_requests(request: Request) -> Response:
    state: FakeProviderState = request.app.state.fake
    model = request.query_params.get("model", "")
    return JSONResponse(list(state.bodies_by_model.get(model, ())))


async def _reset(request: Request) -> Response:
    state: FakeProviderState = request.app.state.fake
    state.reset_stats()
    return JSONResponse({"ok": True})


def create_app(state: FakeProviderState | None = None) -> ASGIApp:
    """Build the fake provider's ASGI app around ``state`` (a fresh one if omitted)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _openai_chat, methods=["POST"]),
            Route("/chat/completions", _openai_chat, methods=["POST"]),
            Route("/v1/messages", _anthropic_messages, methods=["POST"]),
            *fake_embeddings.routes(),  # /v1/embeddings (llmq/testing/fake_embeddings.py)
            Route("/_fake/health", _health, methods=["GET"]),
            Route("/_fake/script", _get_script, methods=["GET"]),
            Route("/_fake/script", _put_script, methods=["PUT"]),
            Route("/_fake/stats", _get_stats, methods=["GET"]),
            Route("/_fake/requests", _get_requests, methods=["GET"]),
            Route("/_fake/reset", _reset, methods=["POST"]),
            *batch_routes(),
        ]
    )
    app.state.fake = state or FakeProviderState()
    return app


# --------------------------------------------------------------------------- running


def _bind_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _uvicorn_config(app: ASGIApp, graceful_shutdown_s: int | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=graceful_shutdown_s,
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class FakeProviderServer:
    """Runs the fake provider in a background thread; usable as a context manager.

    >>> with FakeProviderServer() as server:
    ...     client = openai.OpenAI(base_url=server.openai_base_url, api_key="x")
    """

    def __init__(
        self,
        script: FakeScript | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 5.0,
        control_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.state = FakeProviderState(script)
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.control_timeout_s = control_timeout_s
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeProviderServer:
        if self._thread is not None:
            raise RuntimeError("fake provider already started")
        sock = _bind_socket(self.host, self.requested_port)
        self._port = int(sock.getsockname()[1])
        graceful = max(1, math.ceil(self.shutdown_timeout_s / 2))
        server = uvicorn.Server(_uvicorn_config(create_app(self.state), graceful))
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-provider:{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    def _wait_until_serving(self) -> None:
        assert self._thread is not None
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=1.0) as client:
            while True:
                if not self._thread.is_alive():
                    raise RuntimeError("fake provider thread exited during startup")
                try:
                    if client.get(f"{self.url}/_fake/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"fake provider did not serve within {self.startup_timeout_s} s"
                    )
                # Waiting on the thread doubles as a short poll interval.
                self._thread.join(0.01)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self.shutdown_timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(self.shutdown_timeout_s)
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("fake provider not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- control (over HTTP, so it is safe from any thread)

    def set_script(self, script: FakeScript) -> None:
        if not self.running:
            self.state.set_script(script)
            return
        response = httpx.put(
            f"{self.url}/_fake/script",
            content=script.model_dump_json(),
            headers={"content-type": "application/json"},
            timeout=self.control_timeout_s,
        )
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_fake/stats", timeout=self.control_timeout_s)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def requests(self, model: str) -> list[Any]:
        """The last request bodies (parsed JSON) sent for `model`, oldest first."""
        response = httpx.get(
            f"{self.url}/_fake/requests", params={"model": model}, timeout=self.control_timeout_s
        )
        response.raise_for_status()
        bodies: list[Any] = response.json()
        return bodies

    def reset(self) -> None:
        response = httpx.post(f"{self.url}/_fake/reset", timeout=self.control_timeout_s)
        response.raise_for_status()

    def script_batches(self, *, reset: bool = False, **changes: Any) -> BatchScript:
        """Change the upstream batch script (fields of :class:`BatchScript`; with `reset`, the
        fields not given go back to their defaults); returns the whole script."""
        script = BatchScript.model_validate(changes)
        response = httpx.post(
            f"{self.url}/_fake/batches/script",
            content=script.model_dump_json()
            if reset
            else script.model_dump_json(include=set(changes)),
            headers={"content-type": "application/json"},
            timeout=self.control_timeout_s,
        )
        response.raise_for_status()
        return BatchScript.model_validate(response.json()["script"])

    def advance_batches(self, seconds: float) -> None:
        """Move the upstream batches' clock forward (their turnaround passes without a sleep)."""
        response = httpx.post(
            f"{self.url}/_fake/batches/advance",
            json={"seconds": seconds},
            timeout=self.control_timeout_s,
        )
        response.raise_for_status()


def load_script(path: str | None, latency_ms: float | None = None) -> FakeScript:
    """Read a :class:`FakeScript` from a JSON file (or a bare JSON list of rules).

    ``latency_ms``, when given, overrides the script's base latency.
    """
    script = FakeScript()
    if path is not None:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = {"rules": data}
        script = FakeScript.model_validate(data)
    if latency_ms is not None:
        script = script.model_copy(update={"latency_ms": float(latency_ms)})
        FakeScript.model_validate(script.model_dump())
    return script


def serve(
    host: str, port: int, script: FakeScript, batch_turnaround_s: float | None = None
) -> None:
    """Run the fake provider in the foreground until interrupted (Ctrl+C / SIGTERM)."""
    sock = _bind_socket(host, port)
    bound = int(sock.getsockname()[1])
    url = f"http://{_url_host(host)}:{bound}"
    print(
        f"llmq FAKE LLM provider (test double, not a real model) on {url}\n"
        f"  OpenAI base_url:    {url}/v1\n"
        f"  Anthropic base_url: {url}\n"
        f"  base latency {script.latency_ms} ms, {len(script.rules)} fault rule(s), "
        f"Batch API turnaround {batch_turnaround_s or 0.0} s",
        file=sys.stderr,
        flush=True,
    )
    state = FakeProviderState(script)
    if batch_turnaround_s is not None:
        state.batches.update_script(BatchScript(turnaround_s=batch_turnaround_s))
    server = uvicorn.Server(_uvicorn_config(create_app(state), 5))
    server.run(sockets=[sock])

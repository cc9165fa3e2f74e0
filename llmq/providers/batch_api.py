"""The providers' own Batch APIs (half price, up to 24 h) behind one small client interface.

OpenAI: a JSONL file uploaded with ``purpose="batch"`` and a batch on ``/v1/chat/completions``;
the results come back as an output file (answers) and an error file (failed, expired or
cancelled requests). Anthropic: Message Batches, results as JSONL at the batch's
``results_url``. Both through the official SDKs, built like llmq's sync providers (same base
URL, key and timeouts, ``max_retries=0``: llmq's retry policy owns every attempt).

The request building and result parsing are pure functions below the clients, testable without
a server. SDK failures surface as :class:`~llmq.providers.base.ProviderError`, classified as the
sync providers classify them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anthropic
import openai

from llmq.errors import LlmqError, UserError
from llmq.settings import Settings

from . import anthropic_provider, openai_provider
from .base import CompletionRequest, ProviderError

__all__ = [
    "MAX_BYTES",
    "MAX_ITEMS",
    "BatchApiUnavailable",
    "BatchClient",
    "BatchLookupPending",
    "BatchRequest",
    "ItemResult",
    "UpstreamBatch",
    "batch_client_for",
]

MAX_ITEMS = {"openai": 50_000, "anthropic": 100_000}
MAX_BYTES = {"openai": 200 * 1024**2, "anthropic": 256 * 1024**2}

CHAT_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
INTENT_KEY = "llmq_intent"
FIND_SCAN_LIMIT = 1000
"""How many of the most recent upstream batches :meth:`BatchClient.find` looks through."""

State = Literal["in_progress", "ended", "failed", "expired", "cancelling", "cancelled"]
Outcome = Literal["succeeded", "errored", "expired", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"ended", "failed", "expired", "cancelled"})


class BatchApiUnavailable(UserError):
    """A provider without a Batch API (or without a key) was asked for a batch client."""


class BatchLookupPending(LlmqError):
    """``find`` cannot tell yet: an Anthropic batch still in progress may hold these items.

    Anthropic batches carry no metadata and show their custom ids only in results, which exist
    once a batch ends. Submitting again could pay twice, so the caller asks again later.
    """


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    """The llmq job id."""
    model: str
    """Upstream model name (no ``provider:`` prefix)."""
    messages: list[dict[str, str]]
    """``[{"role": "system"|"user"|"assistant", "content": str}]``, as the sync providers get
    them; the Anthropic client moves ``system`` turns to the request's ``system``."""
    max_tokens: int
    temperature: float | None = None


@dataclass(frozen=True)
class UpstreamBatch:
    upstream_id: str
    state: State
    """Normalized; results may be read once it is ended, expired or cancelled."""
    raw_status: str
    """The provider's own status string."""
    error: str | None
    """Why the whole batch failed or expired."""


@dataclass(frozen=True)
class ItemResult:
    custom_id: str
    outcome: Outcome
    text: str | None
    input_tokens: int
    output_tokens: int
    error: str | None
    # Beyond the shared contract, with defaults: what output review and pricing need as well.
    finish_reason: str = "stop"
    """"stop", "length" (cut off by max_tokens) or "refusal", as :class:`Completion` has it."""
    cached_tokens: int = 0
    """Input tokens read from the prompt cache (included in ``input_tokens``)."""


class BatchClient(Protocol):
    provider: str

    def request_size(self, request: BatchRequest) -> int:
        """Bytes this item adds to the upload."""
        ...

    def submit(self, requests: Sequence[BatchRequest], *, intent_id: str) -> str:
        """Create the upstream batch; return its id. Not idempotent: after a timeout or a lost
        connection the batch may exist upstream, so call find() before submitting again."""
        ...

    def find(
        self, intent_id: str, custom_ids: Sequence[str], *, known_ids: Collection[str] = ()
    ) -> str | None:
        """The upstream batch created for this intent (recovery after a crash between upload
        and recording its id), or None; batches in ``known_ids`` are skipped."""
        ...

    def retrieve(self, upstream_id: str) -> UpstreamBatch: ...

    def results(
        self, upstream_id: str, *, custom_ids: Collection[str] = ()
    ) -> Iterator[ItemResult]:
        """Every item's result once the batch is terminal; ids in ``custom_ids`` that upstream
        does not report are yielded with the outcome the batch's state implies."""
        ...

    def cancel(self, upstream_id: str) -> None: ...


# --------------------------------------------------------------------------- pure: requests


def openai_line(request: BatchRequest) -> bytes:
    """One line of an OpenAI batch input file (with its newline)."""
    body = openai_provider.request_body(
        CompletionRequest(
            model=request.model,
            user="",
            messages=request.messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )
    )
    line = {"custom_id": request.custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def anthropic_params(request: BatchRequest) -> dict[str, Any]:
    """The Messages API params of one Anthropic batch request; system turns become ``system``."""
    system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [m for m in request.messages if m["role"] != "system"],
    }
    if system:
        params["system"] = system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    return params


def anthropic_entry(request: BatchRequest) -> dict[str, Any]:
    return {"custom_id": request.custom_id, "params": anthropic_params(request)}


def anthropic_entry_size(request: BatchRequest) -> int:
    # The JSON of the entry plus the comma between entries in the request body.
    return len(json.dumps(anthropic_entry(request), ensure_ascii=False).encode()) + 1


def check_limits(provider: str, count: int, size: int) -> None:
    """Raise ValueError when a batch would exceed the provider's items or bytes limit."""
    if count == 0:
        raise ValueError("an upstream batch needs at least one request")
    if count > MAX_ITEMS[provider]:
        raise ValueError(f"{count} requests exceed {provider}'s {MAX_ITEMS[provider]} per batch")
    if size > MAX_BYTES[provider]:
        raise ValueError(f"{size} bytes exceed {provider}'s {MAX_BYTES[provider]} per batch")


# --------------------------------------------------------------------------- pure: batches


_OPENAI_STATES: dict[str, State] = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "completed": "ended",
    "failed": "failed",
    "expired": "expired",
    "cancelling": "cancelling",
    "cancelled": "cancelled",
}


def openai_batch_state(batch: dict[str, Any]) -> UpstreamBatch:
    raw = str(batch.get("status"))
    state = _OPENAI_STATES.get(raw, "in_progress")
    error = None
    if state == "failed":
        data = (batch.get("errors") or {}).get("data") or []
        messages = [f"{e.get('code')}: {e.get('message')}" for e in data if isinstance(e, dict)]
        error = "; ".join(messages) or "the upstream batch failed"
    elif state == "expired":
        error = "the upstream batch expired before its completion window ended"
    return UpstreamBatch(str(batch.get("id")), state, raw, error)


def anthropic_batch_state(batch: dict[str, Any]) -> UpstreamBatch:
    raw = str(batch.get("processing_status"))
    counts = batch.get("request_counts") or {}
    state: State = "in_progress"
    error = None
    if raw == "canceling":
        state = "cancelling"
    elif raw == "ended":
        state = "ended"
        if batch.get("cancel_initiated_at"):
            state = "cancelled"
        elif counts.get("expired", 0) and not counts.get("succeeded") and not counts.get("errored"):
            # Anthropic has no batch-level expiry status: every item expired is the batch expired.
            state = "expired"
            error = "the upstream batch expired before its completion window ended"
    return UpstreamBatch(str(batch.get("id")), state, raw, error)


# --------------------------------------------------------------------------- pure: results


def _message_of(body: Any) -> str:
    """The message of an OpenAI or Anthropic error body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            kind = inner.get("type") or inner.get("code")
            message = inner.get("message")
            if isinstance(inner.get("error"), dict):  # Anthropic's {"type": "error", "error": {}}
                return _message_of(inner)
            return f"{kind}: {message}" if kind else str(message)
    return "unknown upstream error"


def parse_openai_line(line: dict[str, Any]) -> ItemResult:
    """One line of an OpenAI batch output or error file."""
    custom_id = str(line.get("custom_id"))
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200:
        body = response.get("body") or {}
        usage = body.get("usage") or {}
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        details = usage.get("prompt_tokens_details") or {}
        refusal = message.get("refusal")
        finish = choices[0].get("finish_reason")
        return ItemResult(
            custom_id,
            "succeeded",
            refusal or message.get("content") or "",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            None,
            finish_reason="refusal" if refusal else ("length" if finish == "length" else "stop"),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )
    if isinstance(response, dict):
        status = response.get("status_code")
        return ItemResult(
            custom_id, "errored", None, 0, 0, f"HTTP {status}: {_message_of(response.get('body'))}"
        )
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    outcome: Outcome = "errored"
    if code == "batch_expired":
        outcome = "expired"
    elif code == "batch_cancelled":
        outcome = "cancelled"
    return ItemResult(custom_id, outcome, None, 0, 0, f"{code}: {message}")


def parse_anthropic_line(line: dict[str, Any]) -> ItemResult:
    """One line of an Anthropic batch's results."""
    custom_id = str(line.get("custom_id"))
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        usage = message.get("usage") or {}
        text = "".join(
            block.get("text", "")
            for block in message.get("content") or []
            if block.get("type") == "text"
        )
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        stop = message.get("stop_reason")
        return ItemResult(
            custom_id,
            "succeeded",
            text,
            # As the sync provider counts them: cache reads and writes are input too.
            int(usage.get("input_tokens") or 0) + cache_read + cache_write,
            int(usage.get("output_tokens") or 0),
            None,
            finish_reason=(
                "refusal" if stop == "refusal" else ("length" if stop == "max_tokens" else "stop")
            ),
            cached_tokens=cache_read,
        )
    if kind == "expired":
        return ItemResult(custom_id, "expired", None, 0, 0, "expired: the batch's window ended")
    if kind == "canceled":
        return ItemResult(custom_id, "cancelled", None, 0, 0, "canceled: the batch was cancelled")
    return ItemResult(custom_id, "errored", None, 0, 0, _message_of(result.get("error")))


def missing_result(custom_id: str, batch: UpstreamBatch) -> ItemResult:
    """The result of an item upstream did not report, from the batch's final state."""
    outcome: Outcome = {"expired": "expired", "cancelled": "cancelled"}.get(  # type: ignore[assignment]
        batch.state, "errored"
    )
    reason = batch.error or f"not in the results of upstream batch {batch.upstream_id}"
    return ItemResult(custom_id, outcome, None, 0, 0, f"{batch.raw_status}: {reason}")


# --------------------------------------------------------------------------- SDK calls


@contextmanager
def _sdk_errors(sdk: Any, status_error: Callable[[Any], ProviderError]) -> Iterator[None]:
    """The SDK's (openai or anthropic, same exception names) failures as ProviderErrors,
    classified by the sync provider's own `status_error`."""
    try:
        yield
    except sdk.APITimeoutError as exc:
        raise ProviderError("timeout", "request timed out", retryable=True) from exc
    except sdk.APIConnectionError as exc:
        raise ProviderError("connection_error", str(exc), retryable=True) from exc
    except sdk.APIStatusError as exc:
        raise status_error(exc) from exc
    except (sdk.APIResponseValidationError, ValueError) as exc:
        raise ProviderError(
            "malformed_response", f"unexpected upstream answer: {exc}", retryable=True
        ) from exc


def _openai_errors() -> AbstractContextManager[None]:
    return _sdk_errors(openai, openai_provider._status_error)


def _anthropic_errors() -> AbstractContextManager[None]:
    return _sdk_errors(anthropic, anthropic_provider._status_error)


def _not_terminal(batch: UpstreamBatch) -> ValueError:
    return ValueError(
        f"upstream batch {batch.upstream_id} is {batch.raw_status}; results exist once it ends"
    )


def _with_missing(
    found: Iterator[ItemResult], batch: UpstreamBatch, custom_ids: Collection[str]
) -> Iterator[ItemResult]:
    seen: set[str] = set()
    for result in found:
        seen.add(result.custom_id)
        yield result
    for custom_id in custom_ids:
        if custom_id not in seen:
            yield missing_result(custom_id, batch)


class OpenAIBatchClient:
    provider = "openai"

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def request_size(self, request: BatchRequest) -> int:
        return len(openai_line(request))

    def submit(self, requests: Sequence[BatchRequest], *, intent_id: str) -> str:
        content = b"".join(openai_line(r) for r in requests)
        check_limits(self.provider, len(requests), len(content))
        with _openai_errors():
            file = self._client.files.create(
                file=(f"llmq-{intent_id}.jsonl", content, "application/jsonl"), purpose="batch"
            )
            batch = self._client.batches.create(
                input_file_id=file.id,
                endpoint=CHAT_ENDPOINT,
                completion_window="24h",
                metadata={INTENT_KEY: intent_id},
            )
        return batch.id

    def find(
        self, intent_id: str, custom_ids: Sequence[str], *, known_ids: Collection[str] = ()
    ) -> str | None:
        with _openai_errors():
            for index, batch in enumerate(self._client.batches.list(limit=100)):
                if index >= FIND_SCAN_LIMIT:
                    break
                if batch.id in known_ids:
                    continue
                if (batch.metadata or {}).get(INTENT_KEY) == intent_id:
                    return batch.id
        return None

    def retrieve(self, upstream_id: str) -> UpstreamBatch:
        with _openai_errors():
            batch = self._client.batches.retrieve(upstream_id)
        return openai_batch_state(batch.to_dict())

    def results(
        self, upstream_id: str, *, custom_ids: Collection[str] = ()
    ) -> Iterator[ItemResult]:
        with _openai_errors():
            batch = self._client.batches.retrieve(upstream_id)
        state = openai_batch_state(batch.to_dict())
        if state.state not in TERMINAL_STATES:
            raise _not_terminal(state)
        files = [f for f in (batch.output_file_id, batch.error_file_id) if f]
        return _with_missing(self._lines(files), state, custom_ids)

    def _lines(self, file_ids: list[str]) -> Iterator[ItemResult]:
        for file_id in file_ids:
            with (
                _openai_errors(),
                self._client.files.with_streaming_response.content(file_id) as response,
            ):
                for raw in response.iter_lines():
                    if raw.strip():
                        yield parse_openai_line(json.loads(raw))

    def cancel(self, upstream_id: str) -> None:
        try:
            with _openai_errors():
                self._client.batches.cancel(upstream_id)
        except ProviderError as exc:
            # 409: it had already ended (or been cancelled); the caller reads its results.
            if exc.status != 409:
                raise


class AnthropicBatchClient:
    provider = "anthropic"

    def __init__(self, client: anthropic.Anthropic) -> None:
        self._client = client

    def request_size(self, request: BatchRequest) -> int:
        return anthropic_entry_size(request)

    def submit(self, requests: Sequence[BatchRequest], *, intent_id: str) -> str:
        # Anthropic batches carry no metadata: find() recognises the batch by its custom ids.
        entries = [anthropic_entry(r) for r in requests]
        check_limits(self.provider, len(requests), sum(anthropic_entry_size(r) for r in requests))
        with _anthropic_errors():
            batch = self._client.messages.batches.create(requests=entries)  # type: ignore[arg-type]
        return batch.id

    def find(
        self, intent_id: str, custom_ids: Sequence[str], *, known_ids: Collection[str] = ()
    ) -> str | None:
        wanted = set(custom_ids)
        pending: list[str] = []
        with _anthropic_errors():
            for index, batch in enumerate(self._client.messages.batches.list(limit=100)):
                if index >= FIND_SCAN_LIMIT:
                    break
                counts = batch.request_counts
                total = (
                    counts.processing
                    + counts.succeeded
                    + counts.errored
                    + counts.canceled
                    + counts.expired
                )
                if batch.id in known_ids or total != len(wanted):
                    continue
                if batch.processing_status != "ended":
                    pending.append(batch.id)
                    continue
                ids = {r.custom_id for r in self._client.messages.batches.results(batch.id)}
                if ids == wanted:
                    return batch.id
        if pending:
            raise BatchLookupPending(
                f"upstream batches {', '.join(pending)} are still in progress with "
                f"{len(wanted)} requests each and may hold intent {intent_id}; ask again later"
            )
        return None

    def retrieve(self, upstream_id: str) -> UpstreamBatch:
        with _anthropic_errors():
            batch = self._client.messages.batches.retrieve(upstream_id)
        return anthropic_batch_state(batch.to_dict())

    def results(
        self, upstream_id: str, *, custom_ids: Collection[str] = ()
    ) -> Iterator[ItemResult]:
        state = self.retrieve(upstream_id)
        if state.state not in TERMINAL_STATES:
            raise _not_terminal(state)
        return _with_missing(self._lines(upstream_id), state, custom_ids)

    def _lines(self, upstream_id: str) -> Iterator[ItemResult]:
        with _anthropic_errors():
            for entry in self._client.messages.batches.results(upstream_id):
                yield parse_anthropic_line(entry.to_dict())

    def cancel(self, upstream_id: str) -> None:
        with _anthropic_errors():
            self._client.messages.batches.cancel(upstream_id)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def batch_client_for(provider: str, settings: Settings) -> BatchClient:
    """The Batch API client of `provider`; BatchApiUnavailable if it has none or no key."""
    timeouts = {
        "connect_timeout_s": settings.provider_connect_timeout_s,
        "read_timeout_s": settings.provider_read_timeout_s,
    }
    if provider == "openai":
        key = _secret(settings.openai_api_key)
        if not key:
            raise BatchApiUnavailable("OPENAI_API_KEY is not set")
        return OpenAIBatchClient(
            openai_provider.sdk_client(key, settings.openai_base_url, **timeouts)
        )
    if provider == "anthropic":
        key = _secret(settings.anthropic_api_key)
        if not key:
            raise BatchApiUnavailable("ANTHROPIC_API_KEY is not set")
        return AnthropicBatchClient(
            anthropic_provider.sdk_client(key, settings.anthropic_base_url, **timeouts)
        )
    raise BatchApiUnavailable(
        f"provider {provider!r} has no Batch API; the provider batch lane supports "
        f"{', '.join(MAX_ITEMS)}"
    )

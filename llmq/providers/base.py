"""The one small interface every provider implements, and the errors it may raise."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from llmq.errors import LlmqError

# HTTP statuses worth another try: timeouts, conflicts, rate limits, server errors, overload.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    user: str
    system: str | None = None
    max_tokens: int = 512
    temperature: float | None = None
    # The raw document behind a templated prompt, for providers that work on text directly.
    document: str | None = None
    style: str | None = None
    # A whole conversation (role/content turns); when set it replaces `user`.
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class RateSnapshot:
    """What one response's rate-limit headers said (rate_headers.py); None = not sent."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None
    retry_after_s: float | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in vars(self).values())


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str  # "stop", "length" or "refusal"
    http_status: int | None = 200
    rate: RateSnapshot | None = None  # the response's rate-limit headers (adaptive limits)


class ProviderError(LlmqError):
    """A failed call, classified for the retry policy. `code` is a stable machine name."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        usage: Usage | None = None,
        rate: RateSnapshot | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s
        self.usage = usage
        self.rate = rate


class Provider(Protocol):
    name: str

    def is_configured(self) -> bool: ...

    def complete(self, request: CompletionRequest) -> Completion: ...


def code_for_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 529:
        return "overloaded"
    if status in (401, 403):
        return "auth_error"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    return "bad_request"


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # an unparseable header is ignored: our own backoff applies
    return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))

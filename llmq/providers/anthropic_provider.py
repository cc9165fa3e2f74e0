"""Anthropic Messages through the official SDK."""

from __future__ import annotations

import time
from typing import Any

import anthropic

from .base import (
    RETRYABLE_STATUSES,
    Completion,
    CompletionRequest,
    ProviderError,
    Usage,
    code_for_status,
    parse_retry_after,
)
from .rate_headers import parse_rate_headers


def sdk_client(
    api_key: str, base_url: str | None, *, connect_timeout_s: float, read_timeout_s: float
) -> anthropic.Anthropic:
    """The SDK client of every llmq call to Anthropic: our retry policy owns every attempt, so
    the SDK never retries behind our back; every call has a timeout."""
    return anthropic.Anthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=anthropic.Timeout(read_timeout_s, connect=connect_timeout_s),
    )


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._client: anthropic.Anthropic | None = None
        if api_key:
            self._client = sdk_client(
                api_key,
                base_url,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
            )

    def is_configured(self) -> bool:
        return self._client is not None

    def complete(self, request: CompletionRequest) -> Completion:
        if self._client is None:
            raise ProviderError("not_configured", "ANTHROPIC_API_KEY is not set", retryable=False)
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": request.messages or [{"role": "user", "content": request.user}],
        }
        if request.system:
            kwargs["system"] = request.system
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            raw = self._client.messages.with_raw_response.create(**kwargs)
            message = raw.parse()
        except anthropic.APITimeoutError as exc:
            raise ProviderError("timeout", "request timed out", retryable=True) from exc
        except anthropic.APIConnectionError as exc:
            raise ProviderError("connection_error", str(exc), retryable=True) from exc
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from exc
        except anthropic.APIResponseValidationError as exc:
            raise ProviderError(
                "malformed_response", "response did not match the API schema", retryable=True
            ) from exc
        except ValueError as exc:
            raise ProviderError(
                "malformed_response", "response body was not valid JSON", retryable=True
            ) from exc
        text = "".join(block.text for block in message.content if block.type == "text")
        rate = parse_rate_headers(raw.headers, time.time())
        usage = Usage(
            input_tokens=message.usage.input_tokens
            + (message.usage.cache_read_input_tokens or 0)
            + (message.usage.cache_creation_input_tokens or 0),
            output_tokens=message.usage.output_tokens,
            cached_tokens=message.usage.cache_read_input_tokens or 0,
        )
        if message.stop_reason == "refusal":
            return Completion(text=text, usage=usage, finish_reason="refusal", rate=rate)
        return Completion(
            text=text,
            usage=usage,
            finish_reason="length" if message.stop_reason == "max_tokens" else "stop",
            rate=rate,
        )


def _status_error(exc: anthropic.APIStatusError) -> ProviderError:
    status = exc.status_code
    if status == 400 and "prompt is too long" in exc.message.lower():
        return ProviderError("context_too_long", exc.message, retryable=False, status=status)
    return ProviderError(
        code_for_status(status),
        exc.message,
        retryable=status in RETRYABLE_STATUSES,
        status=status,
        retry_after_s=parse_retry_after(exc.response.headers),
        rate=parse_rate_headers(exc.response.headers, time.time()),
    )

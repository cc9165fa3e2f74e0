"""OpenAI Chat Completions through the official SDK; any OpenAI-compatible server via base_url."""

from __future__ import annotations

import time
from typing import Any, cast

import openai
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion

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

# The SDK's own switch behind `with_raw_response`: the call returns the raw response (its
# rate-limit headers) with `.parse()` for the typed body.
_RAW: openai.RequestOptions = {"headers": {"X-Stainless-Raw-Response": "true"}}

# Models that reject `max_tokens` and want `max_completion_tokens`.
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def sdk_client(
    api_key: str, base_url: str | None, *, connect_timeout_s: float, read_timeout_s: float
) -> openai.OpenAI:
    """The SDK client of every llmq call to an OpenAI(-compatible) API: our retry policy owns
    every attempt, so the SDK never retries behind our back; every call has a timeout."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(read_timeout_s, connect=connect_timeout_s),
    )


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._api_key = api_key
        self._client: openai.OpenAI | None = None
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
            raise ProviderError("not_configured", "OPENAI_API_KEY is not set", retryable=False)
        body = request_body(request)
        try:
            # The SDK's client.post (its documented way to call any endpoint): the same
            # transport, auth, timeouts, error classes and typed response as
            # chat.completions.create, without create's walk of every one of its ~40 typed
            # params, a third of the SDK's CPU per call. The body is plain JSON that the walk
            # would return unchanged (tests/unit/test_providers_pure.py checks it).
            raw = cast(
                LegacyAPIResponse[ChatCompletion],
                self._client.post(
                    "/chat/completions", body=body, cast_to=ChatCompletion, options=_RAW
                ),
            )
            response = raw.parse()
        except openai.APITimeoutError as exc:
            raise ProviderError("timeout", "request timed out", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError("connection_error", str(exc), retryable=True) from exc
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc
        except openai.APIResponseValidationError as exc:
            raise ProviderError(
                "malformed_response", "response did not match the API schema", retryable=True
            ) from exc
        except ValueError as exc:  # the body was not JSON at all
            raise ProviderError(
                "malformed_response", "response body was not valid JSON", retryable=True
            ) from exc
        if not response.choices:
            raise ProviderError("malformed_response", "response had no choices", retryable=True)
        choice = response.choices[0]
        rate = parse_rate_headers(raw.headers, time.time())
        usage = Usage()
        if response.usage is not None:
            details = response.usage.prompt_tokens_details
            usage = Usage(
                input_tokens=response.usage.prompt_tokens,
                output_tokens=response.usage.completion_tokens,
                cached_tokens=(details.cached_tokens or 0) if details else 0,
            )
        if choice.message.refusal:
            return Completion(
                text=choice.message.refusal, usage=usage, finish_reason="refusal", rate=rate
            )
        return Completion(
            text=choice.message.content or "",
            usage=usage,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            rate=rate,
        )


def request_body(request: CompletionRequest) -> dict[str, Any]:
    """The Chat Completions request body for `request`."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(request.messages or [{"role": "user", "content": request.user}])
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.model.startswith(_COMPLETION_TOKENS_PREFIXES):
        body["max_completion_tokens"] = request.max_tokens
    else:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def _status_error(exc: openai.APIStatusError) -> ProviderError:
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    code = error.get("code") if isinstance(error, dict) else None
    if status == 400 and code == "context_length_exceeded":
        return ProviderError("context_too_long", exc.message, retryable=False, status=status)
    return ProviderError(
        code_for_status(status),
        exc.message,
        retryable=status in RETRYABLE_STATUSES,
        status=status,
        retry_after_s=parse_retry_after(exc.response.headers),
        rate=parse_rate_headers(exc.response.headers, time.time()),
    )

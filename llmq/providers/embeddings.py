"""Embeddings through the official OpenAI SDK (`embeddings.create`): OpenAI itself, or any
OpenAI-compatible server through its base URL. Used by the semantic cache
(llmq/execution/semantic_cache.py), which records each call as an attempt with its cost."""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai

from . import openai_provider
from .base import RETRYABLE_STATUSES, ProviderError, Usage, code_for_status
from .links import parse_link

# text-embedding-3-* can shorten their vectors on request (the `dimensions` parameter); other
# models are not asked and must answer with the size the cache's column has.
_SHORTENABLE = ("text-embedding-3",)


@dataclass(frozen=True)
class Embedding:
    vector: list[float]
    usage: Usage
    latency_ms: float
    http_status: int = 200


class Embedder:
    """One embedding model, named as a link: "openai:text-embedding-3-small"."""

    def __init__(
        self,
        link: str,
        api_key: str | None,
        base_url: str | None,
        *,
        dimensions: int,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        parsed = parse_link(link)
        if parsed.provider != "openai":
            raise ValueError(f"embedding link {link!r}: only openai (or compatible) is supported")
        self.link = str(parsed)
        self.model = parsed.model
        self.dimensions = dimensions
        self._client: openai.OpenAI | None = None
        if api_key:
            # Never retried: a failed embedding only skips the semantic cache.
            self._client = openai_provider.sdk_client(
                api_key,
                base_url,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
            )

    def is_configured(self) -> bool:
        return self._client is not None

    def embed(self, text: str) -> Embedding:
        if self._client is None:
            raise ProviderError("not_configured", "no API key for embeddings", retryable=False)
        started = time.perf_counter()
        try:
            if self.model.startswith(_SHORTENABLE):
                response = self._client.embeddings.create(
                    model=self.model, input=text, encoding_format="float",
                    dimensions=self.dimensions,
                )  # fmt: skip
            else:
                response = self._client.embeddings.create(
                    model=self.model, input=text, encoding_format="float"
                )
        except openai.APITimeoutError as exc:
            raise ProviderError("timeout", "embedding request timed out", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError("connection_error", str(exc), retryable=True) from exc
        except openai.APIStatusError as exc:
            raise ProviderError(
                code_for_status(exc.status_code), exc.message,
                retryable=exc.status_code in RETRYABLE_STATUSES, status=exc.status_code,
            ) from exc  # fmt: skip
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise ProviderError(
                "malformed_response", "embedding response did not match the API", retryable=True
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = Usage(input_tokens=response.usage.prompt_tokens if response.usage else 0)
        if not response.data:
            raise ProviderError(
                "malformed_response", "no embedding returned", retryable=True, usage=usage
            )
        vector = [float(v) for v in response.data[0].embedding]
        if len(vector) != self.dimensions:
            raise ProviderError(
                "dimension_mismatch",
                f"{self.link} returned {len(vector)} dimensions, the cache stores "
                f"{self.dimensions}",
                retryable=False,
                usage=usage,
            )
        return Embedding(vector=vector, usage=usage, latency_ms=latency_ms)

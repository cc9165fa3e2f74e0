"""Build the configured providers once per process and resolve `provider:model` chain links."""

from __future__ import annotations

from dataclasses import dataclass

from llmq.settings import Settings

from .anthropic_provider import AnthropicProvider
from .base import Provider
from .local import LocalProvider
from .openai_provider import OpenAIProvider

KNOWN_PROVIDERS = ("openai", "anthropic", "local")


@dataclass(frozen=True)
class Link:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def parse_link(text: str) -> Link:
    """`provider:model` -> Link; raises ValueError with a message fit for a 422."""
    provider, sep, model = text.partition(":")
    if not sep or not provider or not model:
        raise ValueError(f"chain link {text!r} must look like 'provider:model'")
    if provider not in KNOWN_PROVIDERS:
        raise ValueError(
            f"unknown provider {provider!r} in {text!r}; known: {', '.join(KNOWN_PROVIDERS)}"
        )
    return Link(provider, model)


def build_providers(settings: Settings) -> dict[str, Provider]:
    def secret(value: object) -> str | None:
        return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]

    timeouts = {
        "connect_timeout_s": settings.provider_connect_timeout_s,
        "read_timeout_s": settings.provider_read_timeout_s,
    }
    return {
        "openai": OpenAIProvider(
            secret(settings.openai_api_key), settings.openai_base_url, **timeouts
        ),
        "anthropic": AnthropicProvider(
            secret(settings.anthropic_api_key), settings.anthropic_base_url, **timeouts
        ),
        "local": LocalProvider(),
    }

"""Build the configured providers once per process (links are parsed by llmq.providers.links)."""

from __future__ import annotations

from llmq.settings import Settings

from .anthropic_provider import AnthropicProvider
from .base import Provider
from .local import LocalProvider
from .openai_provider import OpenAIProvider


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

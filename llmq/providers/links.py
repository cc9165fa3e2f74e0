"""Chain links: the `provider:model` strings a job's fallback chain is made of.

Pure and a leaf (nothing of llmq imported), so that settings, templates and routing can check a
link without loading a provider SDK or the registry that builds the clients.
"""

from __future__ import annotations

from dataclasses import dataclass

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

"""What both compatible surfaces share: ids, model names, chat text, request errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmq.chat import Conversation
from llmq.errors import LlmqError
from llmq.providers.links import KNOWN_PROVIDERS

MAX_TOKENS_LIMIT = 32_000  # the native API's bound on params.max_tokens

# What runs on a conversation before it is stored (llmq/admission/guard.chat_ingest): returns the
# text to store (redacted) and the ingest findings, or raises FieldError("input_too_long").
# `params` names each of `conversation.texts()` as the request spelled it, for that error.
ChatIngest = Callable[[Conversation, Sequence[str]], tuple[str, list[dict[str, Any]]]]
# Redaction of one string: the text to store and its findings (llmq/admission/guard.text_redactor).
TextRedactor = Callable[[str], tuple[str, list[dict[str, Any]]]]


@dataclass(frozen=True)
class FieldError(LlmqError):
    """One invalid request: a stable code, the offending parameter and a readable message."""

    code: str
    param: str | None
    message: str

    def __str__(self) -> str:
        return self.message


def public_id(prefix: str, value: uuid.UUID) -> str:
    return f"{prefix}{value.hex}"


def parse_public_id(value: str, prefix: str) -> uuid.UUID | None:
    """The uuid behind `prefix<hex>`, or None when `value` is not such an id."""
    if not value.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=value[len(prefix) :])
    except ValueError:
        return None


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


class ModelResolver:
    """Maps a request's `model` onto a configured `provider:model` chain link.

    Known models are those of the configured chain and the price table; `provider:model` names
    any model of a known provider explicitly (e.g. a local vLLM behind the openai provider)."""

    def __init__(self, known_links: Iterable[str]) -> None:
        self._by_model: dict[str, str] = {}
        for link in known_links:
            self._by_model.setdefault(link.partition(":")[2], link)

    def resolve(self, name: object, param: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise FieldError("invalid_request", param, f"'{param}' must be a non-empty string")
        provider, sep, model = name.partition(":")
        if sep and provider in KNOWN_PROVIDERS and model:
            return name
        link = self._by_model.get(name)
        if link is None:
            raise FieldError(
                "model_not_found",
                param,
                f"the model '{name}' does not exist or is not configured on this server",
            )
        return link


def text_of(content: Any, param: str) -> str:
    """Plain text of a message's content: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise FieldError(
                    "unsupported_content",
                    f"{param}[{index}]",
                    f"only text content is supported, got {kind!r}",
                )
            if not isinstance(block.get("text"), str):
                raise FieldError(
                    "invalid_request", f"{param}[{index}].text", "text must be a string"
                )
            parts.append(block["text"])
        return "\n".join(parts)
    raise FieldError("invalid_request", param, f"'{param}' must be a string or a list of blocks")


def check_number(
    body: dict[str, Any], key: str, param: str, *, low: float, high: float, integer: bool
) -> None:
    value = body.get(key)
    if value is None:
        return
    valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid_type or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise FieldError(
            "invalid_request", param, f"'{param}' must be {kind} in [{low:g}, {high:g}]"
        )

"""Chat jobs: a conversation (system + messages) run as one job of the `chat` template.

The conversation is stored as JSON in the job's `input`. Guardrails run on each message's text
(never on the JSON syntax, so a redaction can not break the document: llmq/guardrails/job_guard.py),
and a job may name the model it asked for in `params["model"]`, which is tried before the configured
chain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmq.errors import LlmqError

Message = dict[str, str]  # {"role": "user" | "assistant", "content": text}
ROLES = ("user", "assistant")


class ChatFormatError(LlmqError, ValueError):
    """A stored chat input that is not a valid conversation."""


@dataclass(frozen=True)
class Conversation:
    system: str | None
    messages: list[Message]

    def encode(self) -> str:
        # ensure_ascii=False keeps the text as written, so guardrails and token estimates see it.
        return json.dumps({"system": self.system, "messages": self.messages}, ensure_ascii=False)

    def texts(self) -> list[str]:
        """Each piece of text the guardrails check, in order: the system prompt, then turns."""
        head = [self.system] if self.system is not None else []
        return head + [message["content"] for message in self.messages]


def decode(text: str) -> Conversation:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatFormatError("chat input must be a JSON conversation") from exc
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ChatFormatError("chat input must be an object with a 'messages' list")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ChatFormatError("chat input 'system' must be a string")
    messages: list[Message] = []
    for message in data["messages"]:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ChatFormatError("each chat message needs a role (user|assistant) and text")
        messages.append({"role": message["role"], "content": message["content"]})
    if not messages:
        raise ChatFormatError("a chat needs at least one message")
    return Conversation(system=system, messages=messages)


def effective_chain(chain: Sequence[str], params: dict[str, Any]) -> list[str]:
    """The model the request named first, then the configured chain (without repeating it)."""
    requested = params.get("model")
    if not isinstance(requested, str) or not requested:
        return list(chain)
    return [requested, *(link for link in chain if link != requested)]

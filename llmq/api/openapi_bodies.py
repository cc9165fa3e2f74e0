"""Request bodies that routes read themselves (a JSON or JSONL batch, the compat APIs' raw
JSON), documented as the server checks them: the OpenAPI schema is what schemathesis fuzzes
(tests/integration/test_fuzz.py), so a body it calls valid must be accepted and one it calls
invalid refused. Unknown fields are refused, as OpenAI ("Unrecognized request argument") and
Anthropic ("Extra inputs are not permitted") do, so the compat objects say
additionalProperties: false."""

from __future__ import annotations

from typing import Any

from llmq.compat import anthropic_format, openai_format
from llmq.compat.common import MAX_TOKENS_LIMIT

from .intake import FORM_FIELDS, JSON_FORM_FIELDS

JsonSchema = dict[str, Any]

_TEXT_BLOCKS: JsonSchema = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    },
}
_CONTENT: JsonSchema = {"anyOf": [{"type": "string"}, _TEXT_BLOCKS]}
_TOKENS: JsonSchema = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_LIMIT}
_TEMPERATURE: JsonSchema = {"type": "number", "minimum": 0, "maximum": 2}


def _body(schema: JsonSchema, description: str) -> JsonSchema:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _ignored(names: set[str]) -> dict[str, JsonSchema]:
    return {name: {"description": "accepted and ignored"} for name in sorted(names)}


CHAT_COMPLETION: JsonSchema = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        "model": {
            "type": "string",
            "pattern": "\\S",
            "description": "a model of the price table or the chain, or provider:model",
        },
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": _CONTENT,
                },
            },
        },
        "max_tokens": _TOKENS,
        "max_completion_tokens": _TOKENS,
        "temperature": _TEMPERATURE,
        "n": {"const": 1},
        "stream": {"const": False, "description": "streaming is not supported"},
        **_ignored(openai_format._IGNORED),
    },
}

ANTHROPIC_BATCH: JsonSchema = {
    "type": "object",
    "required": ["requests"],
    "additionalProperties": False,
    "properties": {
        "requests": {
            "type": "array",
            "minItems": 1,
            "maxItems": anthropic_format.MAX_REQUESTS,
            "description": "custom_ids must be unique; an invalid `params` ends that request "
            "`errored`, not the batch",
            "items": {
                "type": "object",
                # A request without valid params ends `errored`; the batch is still created.
                "required": ["custom_id"],
                "additionalProperties": False,
                "properties": {
                    "custom_id": {"type": "string", "pattern": anthropic_format.CUSTOM_ID.pattern},
                    "params": {"description": "Messages API parameters"},
                },
            },
        }
    },
}


def native_batch(batch_in_ref: str) -> JsonSchema:
    """POST /v1/batches: a JSON BatchIn, or a multipart JSONL upload with the batch's fields."""
    form: dict[str, JsonSchema] = {"file": {"type": "string", "format": "binary"}}
    for name in FORM_FIELDS:
        form[name] = {
            "type": "string",
            "description": "as JSON" if name in JSON_FORM_FIELDS else "as in the JSON body",
        }
    return {
        "requestBody": {
            "required": True,
            "description": "a JSON BatchIn, or multipart/form-data with a JSONL `file` (one "
            "BatchItem per line) and the optional batch fields",
            "content": {
                "application/json": {"schema": {"$ref": batch_in_ref}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "additionalProperties": False,
                        "properties": form,
                    }
                },
            },
        }
    }


CHAT_COMPLETION_BODY = _body(CHAT_COMPLETION, "a Chat Completions request (text content only)")
ANTHROPIC_BATCH_BODY = _body(ANTHROPIC_BATCH, "Anthropic Message Batches requests")

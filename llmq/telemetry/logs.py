"""Structured logs: one JSON object per line, with the request/job context of the thread.

The context (request_id, job_id, batch_id, tenant, ...) lives in a ContextVar, so every record
logged while handling a request or running a job carries it, whichever module logs. Fields
passed as `extra=` (provider, model, attempt, latency_ms, tokens, cost_usd) are added too.

Never logged: prompt or document text (no code path logs it) and secrets (API keys, provider
keys): the formatter also masks bearer tokens, llmq keys and the configured provider keys, in
case one ever reaches a message. The SDK and HTTP client loggers are held at WARNING because
at DEBUG they print whole request bodies.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from llmq.settings import Settings

# Never mutated in place: `bound`/`bind` set a new dict, so the shared default stays empty.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "llmq_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"\bllmq_[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
]
_QUIET = ("openai", "anthropic", "httpx", "httpcore", "urllib3")
_secrets: set[str] = set()


def current() -> dict[str, Any]:
    return dict(_context.get())


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Add fields (None values dropped) to the log context for the duration of the block."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Like `bound` for code that cannot wrap a block (signal pairs); undo with `unbind`."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


def scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + "[redacted]",
            text,
        )
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self._service,
            "msg": scrub(record.getMessage()),
        }
        entry.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in _context.get().items())
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        line = super().format(record)
        return scrub(" ".join(part for part in (line, context, extras) if part))


def configure(settings: Settings, service: str, level: str | None = None) -> None:
    """Send every record of this process to stderr in the configured format, once."""
    for secret in (settings.openai_api_key, settings.anthropic_api_key, settings.flower_password):
        if secret is not None and len(secret.get_secret_value()) >= 4:
            _secrets.add(secret.get_secret_value())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(service) if settings.log_format == "json" else TextFormatter()
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_llmq", False):
            root.removeHandler(old)
    handler._llmq = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)

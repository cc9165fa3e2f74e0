"""A provider's rate-limit headers, read into one normalized snapshot (pure).

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with resets written as Go
durations (``6m0s``, ``1.5s``, ``20ms``). Anthropic sends ``anthropic-ratelimit-{requests,tokens,
input-tokens,output-tokens}-{limit,remaining,reset}`` with resets as RFC 3339 times; its
``tokens`` family is the most restrictive token limit in effect, so it wins over input tokens.
Both may send ``retry-after``. A header that does not parse is ignored, never an error: the
limiter then knows less, and a 429 still teaches it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from .base import RateSnapshot, parse_retry_after

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1h2m3.5s``, ``20ms``) or a bare number of seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None  # junk between the parts
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def parse_reset(text: str, now: float) -> float | None:
    """Seconds until a reset given as a duration or an RFC 3339 time."""
    seconds = parse_duration(text)
    if seconds is not None:
        return seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a time without a zone cannot be placed
    return max(0.0, moment.timestamp() - now)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return max(0, int(float(value.strip())))
    except ValueError:
        return None


def _reset(headers: Mapping[str, str], name: str, now: float) -> float | None:
    value = headers.get(name)
    return None if value is None else parse_reset(value, now)


def parse_rate_headers(headers: Mapping[str, str], now: float) -> RateSnapshot:
    """The snapshot in `headers` (case-insensitive lookups, as httpx.Headers gives)."""
    lower = {key.lower(): value for key, value in headers.items()}
    retry_after = parse_retry_after(lower, now)
    if "x-ratelimit-limit-requests" in lower or "x-ratelimit-limit-tokens" in lower:
        return RateSnapshot(
            requests_limit=_int(lower, "x-ratelimit-limit-requests"),
            requests_remaining=_int(lower, "x-ratelimit-remaining-requests"),
            requests_reset_s=_reset(lower, "x-ratelimit-reset-requests", now),
            tokens_limit=_int(lower, "x-ratelimit-limit-tokens"),
            tokens_remaining=_int(lower, "x-ratelimit-remaining-tokens"),
            tokens_reset_s=_reset(lower, "x-ratelimit-reset-tokens", now),
            retry_after_s=retry_after,
        )
    prefix = "anthropic-ratelimit-"
    tokens = "tokens" if f"{prefix}tokens-limit" in lower else "input-tokens"
    return RateSnapshot(
        requests_limit=_int(lower, f"{prefix}requests-limit"),
        requests_remaining=_int(lower, f"{prefix}requests-remaining"),
        requests_reset_s=_reset(lower, f"{prefix}requests-reset", now),
        tokens_limit=_int(lower, f"{prefix}{tokens}-limit"),
        tokens_remaining=_int(lower, f"{prefix}{tokens}-remaining"),
        tokens_reset_s=_reset(lower, f"{prefix}{tokens}-reset", now),
        retry_after_s=retry_after,
    )

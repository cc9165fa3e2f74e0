"""The FAKE provider's rate limits (a test double): requests and tokens per window per model,
enforced with a sliding window like the real APIs, announced in both providers' headers.

``llmq fake-provider --rpm N --tpm M [--limit-window-s W]`` (or ``FakeScript.limits``) limits
every model to N requests and M tokens (prompt estimate + max_tokens, as OpenAI counts them)
per minute, enforced over a sliding window of W seconds (N*W/60 per window). Every answer
carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
with the limits per window; a request beyond them gets a 429 with ``retry-after``, not counted
in the window. Resets say when the oldest counted request leaves the window (room again).
``/_fake/stats`` reports the admitted and rejected requests under ``limits``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# How many admitted requests the stats keep per model (the most recent ones).
ADMITTED_CAP = 100_000


class RateLimits(BaseModel):
    """Limits per minute, enforced over a sliding window of `window_s`."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, gt=0)

    def per_window(self) -> tuple[int | None, int | None]:
        scale = self.window_s / 60.0
        requests = None if self.rpm is None else max(1, int(self.rpm * scale))
        tokens = None if self.tpm is None else max(1, int(self.tpm * scale))
        return requests, tokens


@dataclass
class _Window:
    calls: deque[tuple[float, int]] = field(default_factory=deque)
    tokens: int = 0
    admitted: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=ADMITTED_CAP))
    rejected: int = 0

    def expire(self, cutoff: float) -> None:
        while self.calls and self.calls[0][0] <= cutoff:
            self.tokens -= self.calls.popleft()[1]


@dataclass(frozen=True)
class Verdict:
    rejected: bool
    headers: dict[str, str]


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``1m30s``, ``1.5s``, ``20ms``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _rfc3339(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class FakeLimiter:
    """Per-model sliding windows; only touched from the fake server's event loop."""

    def __init__(self, limits: RateLimits | None, clock: Any = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def check(self, model: str, tokens: int) -> Verdict:
        if self.limits is None:
            return Verdict(False, {})
        max_req, max_tok = self.limits.per_window()
        window_s, now = self.limits.window_s, self._clock()
        state = self._windows.setdefault(model, _Window())
        state.expire(now - window_s)
        cost = tokens if max_tok is None else min(tokens, max_tok)
        wait = 0.0
        if max_req is not None and len(state.calls) + 1 > max_req:
            wait = state.calls[len(state.calls) - max_req][0] + window_s - now
        if max_tok is not None and state.tokens + cost > max_tok:
            need, freed_at = state.tokens + cost - max_tok, now
            for at, used in state.calls:
                need -= used
                freed_at = at + window_s
                if need <= 0:
                    break
            wait = max(wait, freed_at - now)
        rejected = wait > 0
        if rejected:
            state.rejected += 1
        else:
            state.calls.append((now, cost))
            state.tokens += cost
            state.admitted.append((now, cost))
        headers = self._headers(state, now, max_req, max_tok)
        if rejected:
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return Verdict(rejected, headers)

    def _headers(
        self, state: _Window, now: float, max_req: int | None, max_tok: int | None
    ) -> dict[str, str]:
        assert self.limits is not None
        reset_at = (state.calls[0][0] if state.calls else now) + self.limits.window_s
        headers: dict[str, str] = {}
        for kind, limit, used in (
            ("requests", max_req, len(state.calls)),
            ("tokens", max_tok, state.tokens),
        ):
            if limit is None:
                continue
            remaining = str(max(0, limit - used))
            headers |= {
                f"x-ratelimit-limit-{kind}": str(limit),
                f"x-ratelimit-remaining-{kind}": remaining,
                f"x-ratelimit-reset-{kind}": _go_duration(reset_at - now),
            }
            for family in (("requests",) if kind == "requests" else
                           ("tokens", "input-tokens", "output-tokens")):  # fmt: skip
                headers |= {
                    f"anthropic-ratelimit-{family}-limit": str(limit),
                    f"anthropic-ratelimit-{family}-remaining": remaining,
                    f"anthropic-ratelimit-{family}-reset": _rfc3339(reset_at),
                }
        return headers

    def reset(self) -> None:
        self._windows.clear()

    def stats(self) -> dict[str, Any]:
        max_req, max_tok = self.limits.per_window() if self.limits else (None, None)
        return {
            "window_s": self.limits.window_s if self.limits else None,
            "requests_per_window": max_req,
            "tokens_per_window": max_tok,
            "rejected": sum(w.rejected for w in self._windows.values()),
            "by_model": {
                model: {
                    "admitted": [[at, tokens] for at, tokens in w.admitted],
                    "rejected": w.rejected,
                }
                for model, w in self._windows.items()
            },
        }


def with_limits(script: Any, rpm: int | None, tpm: int | None, window_s: float | None) -> Any:
    """`script` (a FakeScript) with the command line's limits, if any were given."""
    if rpm is None and tpm is None:
        return script
    limits = RateLimits(rpm=rpm, tpm=tpm, window_s=window_s or 60.0)
    return script.model_copy(update={"limits": limits})

"""Rate limits learned from the provider's own headers, shared by every worker through Redis.

Each response's snapshot (llmq/providers/rate_headers.py) updates one Redis hash per
provider:model and account (a hash of the API key and base URL, never the key): the limits per
window, the remaining figures and their age, and `blocked_until` after a 429. The limiter
(llmq/resilience/ratelimit.py) reads the same hash in its admission script and paces calls to
just under the learned limits. The pure parts (account ids, how long a response blocks the
link) are here so they can be tested without Redis.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from llmq.providers.rate_headers import RateSnapshot
from llmq.settings import Settings

log = logging.getLogger(__name__)

# Every learned view, so /readyz, /metrics and `llmq queues` can list them without SCAN.
INDEX_KEY = "llmq:rl:learned"
# A view nobody refreshed for a day is gone: tiers change, and a stale limit must not pace.
VIEW_TTL_S = 86_400


def account_id(api_key: str | None, base_url: str | None) -> str:
    """A short stable id of the account behind a provider client: limits are per key (and
    per endpoint), and the key itself must never reach Redis or a log."""
    digest = hashlib.sha256(f"{base_url or ''}\n{api_key or ''}".encode()).hexdigest()
    return digest[:12]


def provider_accounts(settings: Settings) -> dict[str, str]:
    """The account id of each configured provider client."""
    keys = {
        "openai": (settings.openai_api_key, settings.openai_base_url),
        "anthropic": (settings.anthropic_api_key, settings.anthropic_base_url),
    }
    return {
        name: account_id(key.get_secret_value(), base_url)
        for name, (key, base_url) in keys.items()
        if key is not None
    }


def view_name(link: str, account: str | None) -> str:
    return f"{link}@{account}" if account else link


def hash_key(view: str) -> str:
    return f"llmq:rl:{view}:learned"


def block_seconds(snapshot: RateSnapshot, rate_limited: bool, window_s: float) -> float:
    """How long the link must not be called after this response: a 429 blocks until its
    retry-after (or the reset of the exhausted limit); a success that used the last slot
    blocks one slot's worth of replenishment (a reset header may mean "until fully reset",
    minutes for a token limit, which would stall a link that has room again in a second)."""
    if rate_limited:
        if snapshot.retry_after_s is not None:
            return snapshot.retry_after_s
        resets = [
            reset
            for remaining, reset in (
                (snapshot.requests_remaining, snapshot.requests_reset_s),
                (snapshot.tokens_remaining, snapshot.tokens_reset_s),
            )
            if remaining == 0 and reset is not None
        ]
        # Nothing said when to come back: the job's own backoff applies, the link stays open.
        return min(max(resets), window_s) if resets else 0.0
    block = 0.0
    for limit, remaining, reset in (
        (snapshot.requests_limit, snapshot.requests_remaining, snapshot.requests_reset_s),
        (snapshot.tokens_limit, snapshot.tokens_remaining, snapshot.tokens_reset_s),
    ):
        if remaining == 0 and limit:
            one_slot = window_s / limit
            block = max(block, min(reset, one_slot) if reset is not None else one_slot)
    return block


def pace_limit(learned: int, margin: float, ceiling: int = 0) -> int:
    """The per-window limit the limiter paces to: just under the learned one, never above the
    configured ceiling (LLMQ_RATE_LIMITS), at least one call."""
    paced = max(1, int(learned * (1.0 - margin)))
    return min(paced, ceiling) if ceiling else paced


# KEYS: the view's hash, the index set. ARGV: now, window, view name, ttl, block seconds, then
# requests limit, requests remaining, tokens limit, tokens remaining ('' = not sent).
_LEARN = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local function learn(kind, limit, remaining)
  limit, remaining = tonumber(limit), tonumber(remaining)
  if not limit or limit <= 0 then return end
  redis.call('HSET', KEYS[1], kind .. '_limit', limit)
  if remaining then
    redis.call('HSET', KEYS[1], kind .. '_remaining', remaining)
    -- The first sight of a limit: what this window already used (calls made before anything
    -- was known) is owed, so pacing starts behind them instead of on top of them.
    if redis.call('HEXISTS', KEYS[1], 'tat_' .. kind) == 0 then
      local used = math.max(0, limit - remaining)
      redis.call('HSET', KEYS[1], 'tat_' .. kind, now + used * window / limit)
    end
  end
end
learn('requests', ARGV[6], ARGV[7])
learn('tokens', ARGV[8], ARGV[9])
local block = tonumber(ARGV[5])
if block > 0 then
  local until_ = now + block
  local current = tonumber(redis.call('HGET', KEYS[1], 'blocked_until'))
  if not current or current < until_ then redis.call('HSET', KEYS[1], 'blocked_until', until_) end
end
redis.call('HSET', KEYS[1], 'updated', now)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""


def _arg(value: int | None) -> str:
    return "" if value is None else str(value)


class LearnedLimits:
    """Writes what responses say into the shared view; reads every view back for display."""

    def __init__(self, client: redis.Redis, window_s: float) -> None:
        self._client = client
        self._window_s = window_s
        self._learn = client.register_script(_LEARN)

    def observe(self, view: str, snapshot: RateSnapshot, rate_limited: bool, now: float) -> None:
        """Record one response (raises redis.RedisError: the caller decides how to fail)."""
        # An answer without headers is recorded too: the link is known, unpaced, and not probed.
        block = block_seconds(snapshot, rate_limited, self._window_s)
        self._learn(
            keys=[hash_key(view), INDEX_KEY],
            args=[now, self._window_s, view, VIEW_TTL_S, block,
                  _arg(snapshot.requests_limit), _arg(snapshot.requests_remaining),
                  _arg(snapshot.tokens_limit), _arg(snapshot.tokens_remaining)],
        )  # fmt: skip


@dataclass(frozen=True)
class LearnedView:
    link: str
    account: str | None
    requests_limit: int | None
    requests_remaining: int | None
    tokens_limit: int | None
    tokens_remaining: int | None
    blocked_for_s: float
    age_s: float

    def headroom(self) -> float | None:
        """The smallest share of a limit still remaining when last seen."""
        shares = [
            remaining / limit
            for limit, remaining in (
                (self.requests_limit, self.requests_remaining),
                (self.tokens_limit, self.tokens_remaining),
            )
            if limit and remaining is not None
        ]
        return min(shares) if shares else None

    def describe(self) -> str:
        """One line for `llmq queues`."""
        parts = [
            f"{kind} {remaining}/{limit} left"
            for kind, limit, remaining in (
                ("requests", self.requests_limit, self.requests_remaining),
                ("tokens", self.tokens_limit, self.tokens_remaining),
            )
            if limit
        ]
        headroom = self.headroom()
        if headroom is not None:
            parts.append(f"headroom {headroom:.0%}")
        if self.blocked_for_s > 0:
            parts.append(f"blocked {self.blocked_for_s:.1f} s (429)")
        parts.append(f"seen {self.age_s:.0f} s ago")
        return f"{self.link}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "account": self.account,
            "requests_limit": self.requests_limit,
            "requests_remaining": self.requests_remaining,
            "tokens_limit": self.tokens_limit,
            "tokens_remaining": self.tokens_remaining,
            "headroom": None if self.headroom() is None else round(self.headroom() or 0.0, 4),
            "blocked_for_s": round(self.blocked_for_s, 3),
            "age_s": round(self.age_s, 3),
        }


def _num(raw: Any) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def _count(raw: Any) -> int | None:
    value = _num(raw)
    return None if value is None else int(value)


def learned_views(client: redis.Redis, now: float | None = None) -> list[LearnedView]:
    """Every live view with a limit or a block, by link (raises redis.RedisError)."""
    now = time.time() if now is None else now
    names = sorted(member.decode() for member in client.smembers(INDEX_KEY))
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(hash_key(name))
    views: list[LearnedView] = []
    gone: list[str] = []
    for name, fields in zip(names, pipe.execute(), strict=True):
        if not fields:
            gone.append(name)  # expired: a view nobody refreshed
            continue
        data = {k.decode(): v.decode() for k, v in fields.items()}
        link, _, account = name.partition("@")
        view = LearnedView(
            link=link,
            account=account or None,
            requests_limit=_count(data.get("requests_limit")),
            requests_remaining=_count(data.get("requests_remaining")),
            tokens_limit=_count(data.get("tokens_limit")),
            tokens_remaining=_count(data.get("tokens_remaining")),
            blocked_for_s=max(0.0, (_num(data.get("blocked_until")) or 0.0) - now),
            age_s=max(0.0, now - (_num(data.get("updated")) or now)),
        )
        # A link whose answers carry no limits (a local model) has nothing to show.
        if view.requests_limit or view.tokens_limit or view.blocked_for_s:
            views.append(view)
    if gone:
        client.srem(INDEX_KEY, *gone)
    return views

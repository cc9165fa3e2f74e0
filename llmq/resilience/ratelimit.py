"""Provider rate limits shared by every worker: requests and tokens per window per
provider:model, enforced in Redis before each call.

A sliding-window log (a sorted set of the calls made in the last window) rather than a token
bucket: a bucket lets a full burst plus a window of refill through in the first window, while the
log guarantees that no window of `window_s` seconds ever holds more than the limit, which is what
providers enforce. When there is no room the caller learns how long to wait, and the pipeline
sleeps briefly or gives the job back to the queue. If Redis is unreachable, calls go through.

Limits learned from the providers' headers (adaptive.py) are paced instead: calls evenly spaced
at just under the learned rate (a GCRA "theoretical arrival time" per limit), so a waiting call
reserves a slot a short sleep away instead of every worker retrying at a window's edge.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from llmq.providers.base import Completion, ProviderError, RateSnapshot
from llmq.resilience.adaptive import LearnedLimits, hash_key, view_name
from llmq.resilience.outage import OutageMemo

log = logging.getLogger(__name__)

# A link with no learned view yet lets one call through per PROBE_S (the first answer's headers
# end the probing); the others look again after PROBE_WAIT_S.
PROBE_S = 2.0
PROBE_WAIT_S = 0.25

# KEYS: requests zset, tokens zset, learned view hash (adaptive.py), its probe lock.
# ARGV: now, window, max_requests (0 = none), max_tokens (0 = none), tokens, member id,
# horizon (the longest wait that reserves a slot), margin, adaptive ('1' = pace to the view).
# Returns {admitted (0/1), seconds to wait}: admitted with a wait is a reserved slot to sleep
# until; not admitted, the caller comes back after the wait.
_ACQUIRE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_req, max_tok, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local horizon, margin, adaptive = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local at = now
if max_req > 0 or max_tok > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
end
-- The configured ceiling: a sliding-window log (reserved slots are entries in the future).
if max_req > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= max_req then
    local entry = redis.call('ZRANGE', KEYS[1], n - max_req, n - max_req, 'WITHSCORES')
    at = math.max(at, tonumber(entry[2]) + window)
  end
end
if max_tok > 0 then
  local used = 0
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, member in ipairs(entries) do
    used = used + tonumber(string.match(member, '^(%d+):'))
  end
  if used + tokens > max_tok and #entries > 0 then
    -- wait until enough of the oldest entries leave the window
    local need = used + tokens - max_tok
    local with_scores = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #with_scores, 2 do
      need = need - tonumber(string.match(with_scores[i], '^(%d+):'))
      if need <= 0 then
        at = math.max(at, tonumber(with_scores[i + 1]) + window)
        break
      end
    end
  end
end
-- The learned limits: even spacing (one call per window/limit, tokens likewise), so calls
-- from every worker reach the provider as a steady stream just under its limit.
local req_step, tok_step = nil, nil
if adaptive then
  local v = redis.call('HMGET', KEYS[3], 'requests_limit', 'tokens_limit', 'blocked_until',
                       'tat_requests', 'tat_tokens', 'updated')
  -- Nothing known of this link yet: one call at a time until an answer tells the limits, so
  -- a cold start does not send every worker's burst into an unknown limit.
  if not v[6] and not redis.call('SET', KEYS[4], '1', 'NX', 'PX', PROBE_MS) then
    return {0, tostring(PROBE_WAIT_S)}
  end
  local blocked = tonumber(v[3])
  if blocked and blocked > at then at = blocked end
  local function paced(learned, ceiling)
    local limit = math.max(1, math.floor(learned * (1 - margin)))
    if ceiling > 0 and ceiling < limit then limit = ceiling end
    return limit
  end
  local lr, lt = tonumber(v[1]), tonumber(v[2])
  if lr and lr > 0 then
    req_step = window / paced(lr, max_req)
    at = math.max(at, tonumber(v[4]) or 0)
  end
  if lt and lt > 0 and tokens > 0 then
    local limit = paced(lt, max_tok)
    tok_step = math.min(tokens, limit) * window / limit
    at = math.max(at, tonumber(v[5]) or 0)
  end
end
local wait = at - now
if wait > horizon then return {0, tostring(wait)} end
if max_req > 0 then
  redis.call('ZADD', KEYS[1], at, ARGV[6])
  redis.call('EXPIRE', KEYS[1], math.ceil(window + wait) + 1)
end
if max_tok > 0 then
  redis.call('ZADD', KEYS[2], at, tokens .. ':' .. ARGV[6])
  redis.call('EXPIRE', KEYS[2], math.ceil(window + wait) + 1)
end
if req_step then redis.call('HSET', KEYS[3], 'tat_requests', at + req_step) end
if tok_step then redis.call('HSET', KEYS[3], 'tat_tokens', at + tok_step) end
return {1, tostring(wait)}
""".replace("PROBE_MS", str(round(PROBE_S * 1000))).replace("PROBE_WAIT_S", str(PROBE_WAIT_S))


@dataclass(frozen=True)
class Limit:
    requests: int = 0  # per window; 0 = unlimited
    tokens: int = 0


# Seconds a limiter calls without asking Redis after Redis failed (then it asks again).
STORE_RETRY_S = 2.0


@dataclass(frozen=True)
class Admission:
    admitted: bool
    # Admitted: sleep this long first (a reserved slot). Not admitted: come back after it.
    wait_s: float


class RateLimiter:
    """Configured limits (LLMQ_RATE_LIMITS) and, with `adaptive`, the limits learned from the
    providers' headers (adaptive.py), the configured ones staying a ceiling. `accounts` maps a
    provider name to its account id, so two keys with different tiers keep their own view."""

    def __init__(
        self,
        client: redis.Redis,
        limits: dict[str, Limit],
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        adaptive: bool = False,
        margin: float = 0.03,
        accounts: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._limits = limits
        self._window_s = window_s
        self._clock = clock
        self._adaptive = adaptive
        self._margin = margin
        self._accounts = accounts or {}
        self._acquire = client.register_script(_ACQUIRE)
        self._learned = LearnedLimits(client, window_s) if adaptive else None
        # After a failure the store is skipped briefly: a hung Redis would otherwise cost a
        # socket timeout on every call, and failing open is the answer either way.
        self._store = OutageMemo(STORE_RETRY_S)
        self.unavailable = 0
        self.rejections = 0

    def view(self, link: str) -> str:
        """The learned view `link` is paced by: its provider account's."""
        return view_name(link, self._accounts.get(link.split(":", 1)[0]))

    def acquire(self, link: str, tokens: int) -> float:
        """Reserve one call of `tokens` on `link`: 0.0 if admitted, else seconds to wait."""
        admission = self.admit(link, tokens, 0.0)
        return 0.0 if admission.admitted else admission.wait_s

    def admit(self, link: str, tokens: int, horizon_s: float) -> Admission:
        """One call of `tokens` on `link`, admitted now or at a reserved moment at most
        `horizon_s` away; else not admitted, with the seconds until there is room."""
        limit = self._limits.get(link, Limit())
        adaptive = self._learns(link)
        if not adaptive and not limit.requests and not limit.tokens:
            return Admission(True, 0.0)
        return self._admit(link, limit, tokens, horizon_s, adaptive)

    def _learns(self, link: str) -> bool:
        """Only a provider with an account (a key behind an HTTP API) announces limits; the
        offline `local:` link has none, and costs no Redis round trip."""
        return self._adaptive and link.split(":", 1)[0] in self._accounts

    def acquire_limit(self, link: str, limit: Limit, tokens: int) -> float:
        """Like `acquire`, with the limit given by the caller (e.g. per API key)."""
        if not limit.requests and not limit.tokens:
            return 0.0
        admission = self._admit(link, limit, tokens, 0.0, adaptive=False)
        return 0.0 if admission.admitted else admission.wait_s

    def learn(self, link: str, completion: Completion | None, error: ProviderError | None) -> None:
        """Fold one call's rate-limit headers (and whether it was a 429) into the view. An
        answer without headers counts too (the link is known and unpaced); a call that got no
        response at all (timeout, connection error) says nothing."""
        if completion is not None:
            snapshot, rate_limited = completion.rate or RateSnapshot(), False
        elif error is not None and error.rate is not None:
            snapshot, rate_limited = error.rate, error.status == 429
        else:
            return
        if self._learned is None or not self._learns(link) or not self._store.available():
            return
        try:
            self._learned.observe(self.view(link), snapshot, rate_limited, self._clock())
        except redis.RedisError as exc:
            self._store.failed()
            log.warning(
                "rate-limit store unavailable, %s not learned: %s", link, type(exc).__name__
            )

    def _admit(
        self, link: str, limit: Limit, tokens: int, horizon_s: float, adaptive: bool
    ) -> Admission:
        if limit.tokens and tokens > limit.tokens:
            tokens = limit.tokens  # a call bigger than the whole budget waits for an empty window
        if not self._store.available():
            self.unavailable += 1
            return Admission(True, 0.0)
        view = hash_key(self.view(link))
        try:
            admitted, wait = self._acquire(
                keys=[f"llmq:rl:{link}:req", f"llmq:rl:{link}:tok", view, f"{view}:probe"],
                args=[self._clock(), self._window_s, limit.requests, limit.tokens, tokens,
                      uuid.uuid4().hex, horizon_s, self._margin, "1" if adaptive else "0"],
            )  # fmt: skip
        except redis.RedisError as exc:
            self._store.failed()
            self.unavailable += 1
            log.warning(
                "rate-limit store unavailable, calling %s anyway: %s", link, type(exc).__name__
            )
            return Admission(True, 0.0)
        if not admitted:
            self.rejections += 1
        return Admission(bool(admitted), max(0.0, float(wait)))

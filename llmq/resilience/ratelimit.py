"""Provider rate limits shared by every worker: requests and tokens per window per
provider:model, enforced in Redis before each call.

A sliding-window log (a sorted set of the calls made in the last window) rather than a token
bucket: a bucket lets a full burst plus a window of refill through in the first window, while the
log guarantees that no window of `window_s` seconds ever holds more than the limit, which is what
providers enforce. When there is no room the caller learns how long to wait, and the pipeline
sleeps briefly or gives the job back to the queue. If Redis is unreachable, calls go through.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import redis

from llmq.resilience.outage import OutageMemo

log = logging.getLogger(__name__)

# KEYS: requests zset, tokens zset. ARGV: now, window, max_requests (0 = none),
# max_tokens (0 = none), tokens, member id. Returns seconds to wait (0 = admitted).
_ACQUIRE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_req, max_tok, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local wait = 0
if max_req > 0 and redis.call('ZCARD', KEYS[1]) >= max_req then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now)
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
        wait = math.max(wait, tonumber(with_scores[i + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then return tostring(wait) end
redis.call('ZADD', KEYS[1], now, ARGV[6])
if max_tok > 0 then redis.call('ZADD', KEYS[2], now, tokens .. ':' .. ARGV[6]) end
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
return '0'
"""


@dataclass(frozen=True)
class Limit:
    requests: int = 0  # per window; 0 = unlimited
    tokens: int = 0


# Seconds a limiter calls without asking Redis after Redis failed (then it asks again).
STORE_RETRY_S = 2.0


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        limits: dict[str, Limit],
        window_s: float = 60.0,
        clock: object = time.time,
    ) -> None:
        self._client = client
        self._limits = limits
        self._window_s = window_s
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        # After a failure the store is skipped briefly: a hung Redis would otherwise cost a
        # socket timeout on every call, and failing open is the answer either way.
        self._store = OutageMemo(STORE_RETRY_S)
        self.unavailable = 0
        self.rejections = 0

    def acquire(self, link: str, tokens: int) -> float:
        """Reserve one call of `tokens` on `link`: 0.0 if admitted, else seconds to wait."""
        limit = self._limits.get(link)
        if limit is None:
            return 0.0
        return self.acquire_limit(link, limit, tokens)

    def acquire_limit(self, link: str, limit: Limit, tokens: int) -> float:
        """Like `acquire`, with the limit given by the caller (e.g. per API key)."""
        if not limit.requests and not limit.tokens:
            return 0.0
        if limit.tokens and tokens > limit.tokens:
            tokens = limit.tokens  # a call bigger than the whole budget waits for an empty window
        if not self._store.available():
            self.unavailable += 1
            return 0.0
        try:
            wait = float(self._acquire(
                keys=[f"llmq:rl:{link}:req", f"llmq:rl:{link}:tok"],
                args=[self._clock(), self._window_s, limit.requests, limit.tokens,  # type: ignore[operator]
                      tokens, uuid.uuid4().hex],
            ))  # fmt: skip
        except redis.RedisError as exc:
            self._store.failed()
            self.unavailable += 1
            log.warning(
                "rate-limit store unavailable, calling %s anyway: %s", link, type(exc).__name__
            )
            return 0.0
        if wait > 0:
            self.rejections += 1
        return wait

"""A circuit breaker per provider:model, shared by every worker through Redis.

    closed --(N failures within window)--> open --(cooldown passes)--> half-open
    half-open: one caller gets the probe; success closes, failure opens again for a cooldown.

Each transition is one Lua script, so concurrent workers on many machines agree. Only failures
that say the provider is unhealthy count (5xx, 529, timeouts, connection errors), never a 4xx
caused by the request. If Redis is unreachable the breaker lets calls through (logged, counted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from llmq.metrics import CIRCUIT_OPENED

log = logging.getLogger(__name__)

UNHEALTHY = frozenset({"server_error", "overloaded", "timeout", "connection_error",
                       "malformed_response"})  # fmt: skip

# KEYS: state hash, failures zset. ARGV: now, window, threshold, cooldown, probe_ttl.
_ALLOW = """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local now = tonumber(ARGV[1])
if open_until == 0 then return 'closed' end
if now < open_until then return 'open' end
if redis.call('SET', KEYS[1] .. ':probe', '1', 'NX', 'PX', ARGV[5]) then return 'probe' end
return 'open'
"""
_FAILURE = """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 and now >= open_until then
  -- the half-open probe failed: open again
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[1] .. ':probe', KEYS[2])
  return 'open'
end
redis.call('ZADD', KEYS[2], now, now .. ':' .. redis.call('INCR', KEYS[2] .. ':seq'))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[2])) + 1)
if open_until == 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[2])
  return 'open'
end
return 'closed'
"""


@dataclass(frozen=True)
class CircuitPolicy:
    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0


class CircuitBreaker:
    def __init__(self, client: redis.Redis, policy: CircuitPolicy, clock: object = time.time):
        self._client = client
        self._policy = policy
        self._clock = clock
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)
        self.unavailable = 0

    @staticmethod
    def _keys(link: str) -> list[str]:
        return [f"llmq:cb:{link}", f"llmq:cb:{link}:fails"]

    def _args(self) -> list[float]:
        p = self._policy
        now = self._clock()  # type: ignore[operator]
        return [now, p.window_s, p.failure_threshold, p.cooldown_s, int(p.cooldown_s * 1000)]

    def allow(self, link: str) -> bool:
        """May we call `link` now? (True for closed, and for the one half-open probe.)"""
        try:
            state = self._allow(keys=self._keys(link), args=self._args())
        except redis.RedisError as exc:
            self.unavailable += 1
            log.warning(
                "circuit store unavailable, calling %s anyway: %s", link, type(exc).__name__
            )
            return True
        return bool(state in (b"closed", b"probe", "closed", "probe"))

    def record(self, link: str, *, ok: bool, error_code: str | None = None) -> None:
        try:
            if ok:
                self._client.delete(*self._keys(link), f"llmq:cb:{link}:probe")
            elif error_code in UNHEALTHY:
                state = self._failure(keys=self._keys(link), args=self._args())
                if state in (b"open", "open"):
                    log.warning("circuit for %s is open", link)
                    CIRCUIT_OPENED.labels(link).inc()
        except redis.RedisError as exc:
            self.unavailable += 1
            log.warning("circuit store unavailable: %s", type(exc).__name__)

    def state(self, link: str) -> str:
        """closed, open or half_open (for /readyz and metrics)."""
        try:
            raw = self._client.hget(self._keys(link)[0], "open_until")
        except redis.RedisError:
            return "unknown"
        if raw is None:
            return "closed"
        return "open" if float(raw) > self._clock() else "half_open"  # type: ignore[operator]

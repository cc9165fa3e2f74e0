"""A circuit breaker per provider:model, shared by every worker through Redis.

    closed --(>= N failures AND >= rate of calls failed, within window)--> open
    open --(cooldown passes)--> half-open
    half-open: one caller gets the probe; success closes, failure opens again for a cooldown.

Each transition is one Lua script, so concurrent workers on many machines agree. Only failures
that say the provider is unhealthy count (5xx, 529, timeouts, connection errors), never a 4xx
caused by the request. The rate condition matters at volume: a provider failing 30% of calls
is degraded, not down, and retries get through it; opening on a bare count would send all its
traffic elsewhere every few seconds. If Redis is unreachable the breaker lets calls through
(logged, counted).
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

# KEYS: state hash, failures zset, successes zset.
# ARGV: now, window, threshold, cooldown, probe_ttl, failure_rate, min_calls.
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
redis.call('ZADD', KEYS[2], now, now .. ':' .. redis.call('INCR', KEYS[1] .. ':seq'))
for i = 2, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[2]))
  redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[2])) + 1)
end
local failures = redis.call('ZCARD', KEYS[2])
local calls = failures + redis.call('ZCARD', KEYS[3])
-- Few calls: open only if every one failed. Enough calls: open at the failure rate.
if open_until == 0 and failures >= tonumber(ARGV[3]) and (failures == calls
    or (calls >= tonumber(ARGV[7]) and failures >= tonumber(ARGV[6]) * calls)) then
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[2], KEYS[3])
  return 'open'
end
return 'closed'
"""
_SUCCESS = """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 then
  if now >= open_until then
    -- the half-open probe succeeded: close
    redis.call('DEL', KEYS[1], KEYS[1] .. ':probe', KEYS[2], KEYS[3])
    return 'closed'
  end
  return 'open'  -- a call that started before the circuit opened: it does not close it
end
redis.call('ZADD', KEYS[3], now, now .. ':' .. redis.call('INCR', KEYS[1] .. ':seq'))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[2])) + 1)
return 'closed'
"""


@dataclass(frozen=True)
class CircuitPolicy:
    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0
    failure_rate: float = 0.5  # share of the window's calls that must have failed
    # Below this many calls in the window the rate is noise: open only if all of them failed.
    min_calls: int = 50


class CircuitBreaker:
    def __init__(self, client: redis.Redis, policy: CircuitPolicy, clock: object = time.time):
        self._client = client
        self._policy = policy
        self._clock = clock
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)
        self.unavailable = 0

    @staticmethod
    def _keys(link: str) -> list[str]:
        return [f"llmq:cb:{link}", f"llmq:cb:{link}:fails", f"llmq:cb:{link}:oks"]

    def _args(self) -> list[float]:
        p = self._policy
        now = self._clock()  # type: ignore[operator]
        return [
            now, p.window_s, p.failure_threshold, p.cooldown_s, int(p.cooldown_s * 1000),
            p.failure_rate, p.min_calls,
        ]  # fmt: skip

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
                self._success(keys=self._keys(link), args=self._args())
            elif error_code in UNHEALTHY:
                state = self._failure(keys=self._keys(link), args=self._args())
                if state in (b"open", "open"):
                    log.warning("circuit for %s is open", link)
                    CIRCUIT_OPENED.labels(link).inc()
        except redis.RedisError as exc:
            self.unavailable += 1
            log.warning("circuit store unavailable: %s", type(exc).__name__)

    def reopens_in(self, link: str) -> float:
        """Seconds until an open circuit lets a probe through (0 when it is not open)."""
        try:
            raw = self._client.hget(self._keys(link)[0], "open_until")
        except redis.RedisError:
            return 0.0
        return 0.0 if raw is None else max(0.0, float(raw) - self._clock())  # type: ignore[operator]

    def state(self, link: str) -> str:
        """closed, open or half_open (for /readyz and metrics)."""
        try:
            raw = self._client.hget(self._keys(link)[0], "open_until")
        except redis.RedisError:
            return "unknown"
        if raw is None:
            return "closed"
        return "open" if float(raw) > self._clock() else "half_open"  # type: ignore[operator]

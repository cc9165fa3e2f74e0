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

The healthy path is kept off Redis: a process trusts a "closed" answer for `allow_cache_s` and
sends successes in batches every `success_flush_s` (and with the next failure, so the failure
rate is judged on every call). That saves two round trips per job; the price is that a circuit
opened by another worker is seen here up to `allow_cache_s` late. Failures, probes and anything
while the circuit is not closed always go to Redis at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import redis

from llmq.settings import Settings
from llmq.telemetry.metrics import CIRCUIT_OPENED

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
# Adds ARGV[8] successes to the window (one member each: the rate counts calls).
_ADD_SUCCESSES = """
local function add_successes(now, n)
  if n <= 0 then return end
  local seq = redis.call('INCRBY', KEYS[1] .. ':seq', n)
  for i = 0, n - 1 do
    redis.call('ZADD', KEYS[3], now, now .. ':' .. (seq - i))
  end
end
"""
_FAILURE = (
    _ADD_SUCCESSES
    + """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 and now >= open_until then
  -- the half-open probe failed: open again
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[1] .. ':probe', KEYS[2])
  return 'open'
end
if open_until == 0 then add_successes(now, tonumber(ARGV[8])) end
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
)
# ARGV[9] = '1': a single call made under a probe or a non-closed state, which may close the
# circuit; '0': a batch of calls made while it was closed, which never does.
_SUCCESS = (
    _ADD_SUCCESSES
    + """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 then
  if now >= open_until and ARGV[9] == '1' then
    -- the half-open probe succeeded: close
    redis.call('DEL', KEYS[1], KEYS[1] .. ':probe', KEYS[2], KEYS[3])
    return 'closed'
  end
  return 'open'  -- a call that started before the circuit opened: it does not close it
end
add_successes(now, tonumber(ARGV[8]))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[2])) + 1)
return 'closed'
"""
)


@dataclass(frozen=True)
class CircuitPolicy:
    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0
    failure_rate: float = 0.5  # share of the window's calls that must have failed
    # Below this many calls in the window the rate is noise: open only if all of them failed.
    min_calls: int = 50
    allow_cache_s: float = 0.5  # how long a process trusts a "closed" answer
    success_flush_s: float = 0.25  # how long successes wait to be sent together


def circuit_policy(settings: Settings) -> CircuitPolicy:
    """The policy the workers run with; the API reads circuit states with the same one."""
    return CircuitPolicy(
        failure_threshold=settings.circuit_failure_threshold,
        window_s=settings.circuit_window_s,
        cooldown_s=settings.circuit_cooldown_s,
        failure_rate=settings.circuit_failure_rate,
        min_calls=settings.circuit_min_calls,
    )


class CircuitBreaker:
    """Thread-safe: one instance serves every thread of a worker process."""

    def __init__(self, client: redis.Redis, policy: CircuitPolicy, clock: object = time.time):
        self._client = client
        self._policy = policy
        self._clock = clock
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)
        self.unavailable = 0
        self._lock = threading.Lock()
        self._closed_until: dict[str, float] = {}  # link -> when the cached "closed" expires
        self._pending: Counter[str] = Counter()  # successes not sent yet
        self._flushed_at: dict[str, float] = {}

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator]

    @staticmethod
    def _keys(link: str) -> list[str]:
        return [f"llmq:cb:{link}", f"llmq:cb:{link}:fails", f"llmq:cb:{link}:oks"]

    def _args(self, now: float, successes: int = 0, may_close: bool = False) -> list[float]:
        p = self._policy
        return [
            now, p.window_s, p.failure_threshold, p.cooldown_s, int(p.cooldown_s * 1000),
            p.failure_rate, p.min_calls, successes, int(may_close),
        ]  # fmt: skip

    def _known_closed(self, link: str, now: float) -> bool:
        return self._closed_until.get(link, float("-inf")) > now

    def allow(self, link: str) -> bool:
        """May we call `link` now? (True for closed, and for the one half-open probe.)"""
        now = self._now()
        with self._lock:
            if self._known_closed(link, now):
                return True
        try:
            state = self._allow(keys=self._keys(link), args=self._args(now))
        except redis.RedisError as exc:
            self.unavailable += 1
            log.warning(
                "circuit store unavailable, calling %s anyway: %s", link, type(exc).__name__
            )
            return True
        if state in (b"closed", "closed"):
            with self._lock:
                self._closed_until[link] = now + self._policy.allow_cache_s
            return True
        return bool(state in (b"probe", "probe"))

    def record(self, link: str, *, ok: bool, error_code: str | None = None) -> None:
        now = self._now()
        try:
            if ok:
                self._record_success(link, now)
            elif error_code in UNHEALTHY:
                with self._lock:
                    # Judge this failure with every success so far, and ask Redis again next.
                    successes = self._pending.pop(link, 0)
                    self._closed_until.pop(link, None)
                state = self._failure(keys=self._keys(link), args=self._args(now, successes))
                if state in (b"open", "open"):
                    log.warning("circuit for %s is open", link)
                    CIRCUIT_OPENED.labels(link).inc()
        except redis.RedisError as exc:
            self.unavailable += 1
            log.warning("circuit store unavailable: %s", type(exc).__name__)

    def _record_success(self, link: str, now: float) -> None:
        with self._lock:
            if not self._known_closed(link, now):
                batch, may_close = 1, True  # a probe, or a state we do not know: send now
            else:
                self._pending[link] += 1
                if now - self._flushed_at.get(link, float("-inf")) < self._policy.success_flush_s:
                    return
                batch, may_close = self._pending.pop(link), False
            self._flushed_at[link] = now
        self._success(keys=self._keys(link), args=self._args(now, batch, may_close))

    def reopens_in(self, link: str) -> float:
        """Seconds until an open circuit lets a probe through (0 when it is not open)."""
        try:
            raw = self._client.hget(self._keys(link)[0], "open_until")
        except redis.RedisError:
            return 0.0
        return 0.0 if raw is None else max(0.0, float(raw) - self._now())

    def state(self, link: str) -> str:
        """closed, open or half_open (for /readyz and metrics)."""
        try:
            raw = self._client.hget(self._keys(link)[0], "open_until")
        except redis.RedisError:
            return "unknown"
        if raw is None:
            return "closed"
        return "open" if float(raw) > self._now() else "half_open"

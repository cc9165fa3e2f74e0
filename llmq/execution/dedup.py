"""In-flight de-duplication: identical jobs running at once are computed once.

The exact-match cache only helps jobs that start after an identical one finished. Here the first
job to miss the cache for a key becomes its *leader*: it takes a Redis lock on the key
(`SET NX` with an expiry of one job lease, renewed while it works) and computes. A job that
misses the cache while the lock is held is a *follower*: it registers as a waiter and hands its
worker slot back (the pipeline's `Deferred`, shown as `queued`); it is not a lost delivery, so it
never counts towards max_deliveries. When the leader ends:

* with an answer (in the cache by then): the lock is released and the waiters re-published at
  once; they find the answer and finish as cache hits (cost 0);
* without one (failed, blocked, cancelled, crashed): the lock is released with a short-lived
  "failed" mark and the waiters re-published; they then compute themselves, in parallel, as if
  there were no de-duplication (a leader's failure never fails its followers);
* handed back itself (a long backoff or the rate limit): it keeps the lock for that wait plus a
  lease and takes it up again when it comes back (the lock holds the job id, not the delivery).

A leader that dies stops renewing; its lock expires within a lease and the first follower to
come back (each waits at most until the lock would expire) takes over. Every decision is one Lua
script, so a follower can not register after the leader drained the waiters and be forgotten:
after its hand-back is written it checks that it is still registered, and re-publishes itself
if the leader already left. An unreachable Redis turns de-duplication off (the job computes).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine

from llmq import store
from llmq.execution.cache import CachedResult, ResultCache
from llmq.telemetry.metrics import DEDUP

log = logging.getLogger(__name__)

PREFIX = "llmq:inflight:"

# KEYS: lock, waiters, failed mark, cache entry. ARGV: job id, lock ttl ms. The cache lookup is
# part of it, so a job that misses the cache pays one round trip for both.
# -> {"cached", value} | {"bypass"} | {"leader"} | {"follower", lock pttl ms, newly added 0/1}
_ENTER = """
local cached = redis.call('GET', KEYS[4])
if cached then return {'cached', cached} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'bypass'} end
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[1])
  return {'leader'}
end
local added = redis.call('SADD', KEYS[2], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
redis.call('PEXPIRE', KEYS[2], math.max(ttl, 0) + tonumber(ARGV[2]))
return {'follower', ttl, added}
"""

# KEYS: lock, waiters, failed mark. ARGV: job id, "done" | "failed" | "later", ttl ms.
# -> the waiters to wake (only when the caller still held the lock and is done or failed).
_LEAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
if ARGV[2] == 'later' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {}
end
redis.call('DEL', KEYS[1])
if ARGV[2] == 'failed' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[3]) end
local waiters = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
return waiters
"""

# KEYS: lock. ARGV: job id, ttl ms. Extends the lock only while the job still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _keys(cache_key: str) -> tuple[str, str, str]:
    digest = cache_key.rsplit(":", 1)[-1]
    lock = PREFIX + digest
    return lock, lock + ":waiters", lock + ":failed"


@dataclass(frozen=True)
class Lead:
    """This job computes the answer; it must `leave` when done."""


@dataclass(frozen=True)
class Follow:
    """An identical job is computing: hand the slot back for `delay_s` at most."""

    delay_s: float


@dataclass(frozen=True)
class Alone:
    """No de-duplication for this job: the last leader failed, or Redis is unreachable
    (`looked`: False when the cache was not read either)."""

    looked: bool = True


@dataclass(frozen=True)
class Cached:
    """The answer is in the cache (its raw value)."""

    raw: bytes | str


Turn = Lead | Follow | Alone | Cached
WAITING = {"link": "cache", "waiting": "identical_job_in_flight"}  # the follower's route entry


def classify(result: Any) -> str:
    """How a leader's result leaves the lock: an answer (`done`), its own hand-back to come back
    later (`later`), or nothing its followers can use (`failed`)."""
    status = getattr(result, "status", None)
    if status is None and result is not None and hasattr(result, "delay_s"):
        return "later"
    if status == "succeeded" and getattr(result, "result", None) is not None:
        return "done"
    return "failed"


class InFlight:
    def __init__(
        self,
        client: redis.Redis,
        lock_s: float,
        wake: Callable[[list[str]], None],
        *,
        min_wait_s: float = 0.5,
    ) -> None:
        self._client = client
        self._lock_ms = max(1, int(lock_s * 1000))
        self._wake = wake
        self._min_wait_s = min_wait_s
        self._enter = client.register_script(_ENTER)
        self._leave = client.register_script(_LEAVE)
        self._renew = client.register_script(_RENEW)
        self._renewer = _Renewer(self._renew_all, lock_s / 3)

    # -- the leader's side ------------------------------------------------------------------

    def enter(self, cache_key: str, job_id: str) -> Turn:
        lock, waiters, failed = _keys(cache_key)
        try:
            reply = self._enter(
                keys=[lock, waiters, failed, cache_key], args=[job_id, self._lock_ms]
            )
        except redis.RedisError as exc:
            log.warning("in-flight de-duplication unavailable: %s", type(exc).__name__)
            return Alone(looked=False)
        kind = _text(reply[0])
        if kind == "cached":
            return Cached(reply[1])
        if kind == "leader":
            self._renewer.add(lock, job_id)
            return Lead()
        if kind == "follower":
            if int(reply[2]):
                DEDUP.labels("waited").inc()
            # Back when the lock would expire if its leader died now (woken sooner if it ends).
            return Follow(max(self._min_wait_s, int(reply[1]) / 1000 + 0.1))
        DEDUP.labels("computed_alone").inc()  # "bypass": the last leader failed
        return Alone()

    def leave(self, cache_key: str, job_id: str, how: str, later_s: float = 0.0) -> None:
        lock, waiters, failed = _keys(cache_key)
        self._renewer.discard(lock, job_id)
        ttl_ms = int((later_s * 1000 if how == "later" else 0) + self._lock_ms)
        try:
            woken = [_text(w) for w in self._leave(keys=[lock, waiters, failed],
                                                   args=[job_id, how, ttl_ms])]  # fmt: skip
        except redis.RedisError as exc:
            # The lock expires by itself and the waiters come back when it would have.
            log.warning("could not release an in-flight lock: %s", type(exc).__name__)
            return
        if woken:
            DEDUP.labels("served" if how == "done" else "leader_failed").inc(len(woken))
            self._wake_quietly(woken)

    # -- the follower's side ----------------------------------------------------------------

    def after_hand_back(self, cache_key: str, job_id: str) -> None:
        """Run once the follower's hand-back is written: if its leader already left (and so
        could not wake it), wake it now."""
        _, waiters, _ = _keys(cache_key)
        try:
            still_waiting = bool(self._client.sismember(waiters, job_id))
        except redis.RedisError:
            return  # it comes back after its delay anyway
        if not still_waiting:
            self._wake_quietly([job_id])

    def _wake_quietly(self, job_ids: list[str]) -> None:
        try:
            self._wake(job_ids)
        except Exception as exc:  # the reconciler publishes them when their delay is over
            log.warning("could not wake %d waiting job(s): %s", len(job_ids), type(exc).__name__)

    def _renew_all(self, held: dict[str, str]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for lock, job_id in held.items():
                self._renew(keys=[lock], args=[job_id, self._lock_ms], client=pipe)
            pipe.execute()

    def stop(self) -> None:
        self._renewer.stop()


@dataclass
class Result:
    value: Any = None  # the leader's Outcome or Deferred; None if it raised


@contextlib.contextmanager
def leading(inflight: InFlight | None, turn: Turn, cache_key: str, job_id: str) -> Iterator[Result]:
    """Around the computation of an answer: a leader releases its lock however that ends (set
    `.value` to the result); for any other turn this does nothing."""
    result = Result()
    if inflight is None or not isinstance(turn, Lead):
        yield result
        return
    try:
        yield result
    finally:
        how = classify(result.value)
        inflight.leave(cache_key, job_id, how, getattr(result.value, "delay_s", 0.0))


def look_up(
    cache: ResultCache, inflight: InFlight | None, cache_key: str, job_id: str
) -> tuple[CachedResult | None, Turn]:
    """The cached answer, or this job's turn: lead (compute), follow (wait), or alone."""
    if inflight is None:
        return cache.get(cache_key), Alone()
    turn = inflight.enter(cache_key, job_id)  # reads the cache too
    if isinstance(turn, Cached):
        return cache.found(turn.raw), Alone()
    if isinstance(turn, Alone) and not turn.looked:
        return cache.get(cache_key), turn
    cache.found(None)
    return None, turn


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Renewer:
    """Extends the locks of leaders still working, every third of the lock's life (like the
    job leases), so a long provider call keeps its followers waiting rather than duplicating it."""

    def __init__(self, renew: Callable[[dict[str, str]], None], every_s: float) -> None:
        self._renew = renew
        self._every_s = every_s
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, lock: str, job_id: str) -> None:
        with self._lock:
            self._held[lock] = job_id
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmq-inflight-renewer", daemon=True
                )
                self._thread.start()

    def discard(self, lock: str, job_id: str) -> None:
        with self._lock:
            # Only its own: a lock that expired may have been taken over by a job of this process.
            if self._held.get(lock) == job_id:
                del self._held[lock]

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                self._renew(held)
            except redis.RedisError as exc:
                log.warning("could not renew %d in-flight locks: %s", len(held), type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()


def wake_jobs(
    engine: Engine, publish: Callable[[Sequence[tuple[str, str]]], None], job_ids: list[str]
) -> None:
    """Re-publish handed-back jobs now (their delay is only the fallback)."""
    due = store.wake_jobs(engine, job_ids)
    try:
        publish(due)
    except Exception:
        store.undo_dispatch(engine, [job_id for job_id, _ in due])  # the reconciler will
        raise

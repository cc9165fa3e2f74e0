"""Worker heartbeats in Redis: each worker process refreshes a key with a TTL, so /readyz and
operators can list live workers without asking Celery (no broadcast, no mingle/gossip).

The names are also kept in one set, so readers never SCAN a keyspace that holds the cache."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

import redis

log = logging.getLogger(__name__)

KEY_PREFIX = "llmq:worker:"
NAMES_KEY = "llmq:workers"


def _ttl_s(interval_s: float) -> int:
    # Three missed beats before a worker counts as gone.
    return max(2, int(interval_s * 3 + 0.999))


class Heartbeat:
    def __init__(
        self, client: redis.Redis, name: str, queues: list[str], interval_s: float
    ) -> None:
        self._client = client
        self._name = name
        self._interval_s = interval_s
        self._info = json.dumps(
            {"name": name, "pid": os.getpid(), "queues": queues, "started": time.time()}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-heartbeat", daemon=True)

    @property
    def key(self) -> str:
        return KEY_PREFIX + self._name

    def beat(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self.key, self._info, ex=_ttl_s(self._interval_s))
        pipe.sadd(NAMES_KEY, self._name)
        pipe.execute()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # no beat may land after the delete
        with contextlib.suppress(redis.RedisError):
            self._client.delete(self.key)  # gone now, not after the TTL
            self._client.srem(NAMES_KEY, self._name)

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", type(exc).__name__)
            if self._stop.wait(self._interval_s):
                return


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired, by name (names of expired ones are pruned)."""
    names = sorted(n.decode() if isinstance(n, bytes) else str(n)
                   for n in client.smembers(NAMES_KEY))  # fmt: skip
    if not names:
        return []
    workers, gone = [], []
    for name, raw in zip(names, client.mget([KEY_PREFIX + n for n in names]), strict=True):
        if raw is None:
            gone.append(name)
        else:
            workers.append(json.loads(raw))
    if gone:
        client.srem(NAMES_KEY, *gone)
    return workers

"""Provider calls that were paid for but could not be recorded: parked in Redis until the job's
next delivery records them.

A call's attempt row is written right after the call; the pipeline retries that write through a
short Postgres refusal (too many clients, a role's CONNECTION LIMIT, a restart). When Postgres
stays unreachable longer, the answer would be lost with the worker's memory and bought again by
the next delivery. Instead it is parked here (a hash per job, one field per call) and the next
delivery inserts it as an attempt before anything else, then finishes from it like any recorded
answer (route step `recovered_attempt`): provider calls == attempt rows, cost counted once.

The field is deleted only after its row is written, so a crash in between can at worst write
the row twice, never lose it. A Redis outage at the same time as the Postgres one loses the
answer (logged).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict
from decimal import Decimal

import redis

from llmq.store import AttemptRecord, crypto

log = logging.getLogger(__name__)

PREFIX = "llmq:paid:"


class PaidCalls:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self._client = client
        self._ttl_s = max(1, int(ttl_s))

    def park(self, job_id: uuid.UUID, record: AttemptRecord) -> bool:
        """Keep an unrecorded call for the job's next delivery; False if Redis is down too."""
        key = PREFIX + str(job_id)
        try:
            pipe = self._client.pipeline()
            field = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts in call order
            pipe.hset(key, field, crypto.encrypt(json.dumps(asdict(record), default=str)))
            pipe.expire(key, self._ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.error(
                "a paid provider call of job %s is lost: Postgres and Redis are both "
                "unreachable (%s)",
                job_id,
                type(exc).__name__,
            )
            return False
        log.warning("parked a paid provider call of job %s until Postgres is back", job_id)
        return True

    def parked(self, job_id: uuid.UUID) -> list[tuple[str, AttemptRecord]]:
        """The job's parked calls, in the order they were made."""
        raw = self._client.hgetall(PREFIX + str(job_id))
        calls = []
        for field, value in sorted(raw.items()):
            data = json.loads(crypto.decrypt(_text(value)))
            if data.get("cost_usd") is not None:
                data["cost_usd"] = Decimal(data["cost_usd"])
            calls.append((_text(field), AttemptRecord(**data)))
        return calls

    def forget(self, job_id: uuid.UUID, field: str) -> None:
        self._client.hdel(PREFIX + str(job_id), field)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reseal_redis(client: redis.Redis, batch: int = 500) -> tuple[int, int]:
    """`llmq keys rotate-data` for Redis: (cache entries dropped, parked calls re-sealed).

    A cached answer not under the newest key was stored under a cache key derived from an older
    key (llmq/execution/cache.py), which no worker computes any more: it is dropped, not
    re-sealed. A parked call is re-sealed in place (HSET of the same field)."""
    cipher = crypto.cipher()
    if cipher is None:
        return 0, 0
    newest = cipher.newest.encode()
    dropped = resealed = 0
    for key in client.scan_iter(match="llmq:cache:*", count=batch):
        value = client.get(key)
        if value is not None and not value.startswith(newest):
            dropped += client.delete(key)
    for key in client.scan_iter(match=PREFIX + "*", count=batch):
        for field, value in client.hgetall(key).items():
            if not value.startswith(newest):
                client.hset(key, field, cipher.encrypt(cipher.decrypt(_text(value))))
                resealed += 1
    return dropped, resealed

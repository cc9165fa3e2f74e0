"""Queue depth straight from Redis (Flower's /api/queues/length does the same sum)."""

from __future__ import annotations

import redis

from llmq.settings import QUEUES

# kombu's Redis transport keeps one list per priority step: "q", "q\x06\x163", ...
PRIORITY_STEPS = (0, 3, 6, 9)
SEP = "\x06\x16"


def _keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for key in _keys(queue):
            pipe.llen(key)
    lengths = pipe.execute()
    per_queue = len(PRIORITY_STEPS)
    return {
        queue: int(sum(lengths[i * per_queue : (i + 1) * per_queue]))
        for i, queue in enumerate(QUEUES)
    }

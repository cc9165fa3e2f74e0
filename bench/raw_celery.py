"""The engine's ceiling: a Celery app whose only task sleeps for the provider latency, on the
same Redis and pool as llmq. Counts completions in Redis (results are not stored)."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery


def bare_app(name: str) -> Celery:
    """A Celery app on llmq's Redis with llmq's delivery settings and no llmq code."""
    app = Celery(name, broker=os.environ["REDIS_URL"])
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app


app = bare_app("raw")
_counter = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="raw.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)
    _counter.incr("raw:done")

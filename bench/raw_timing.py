"""Bare Celery's queue wait, the floor for bench/overhead.py: a task that records when it was
sent (an argument), when it started and when it ended, on the same Redis and pool as llmq."""

from __future__ import annotations

import json
import os
import time

import redis

from bench.raw_celery import bare_app

TIMINGS = "raw:timings"

app = bare_app("raw_timing")
_client = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="raw.timed_sleep")
def timed_sleep(sent_at: float, seconds: float) -> None:
    started = time.time()
    time.sleep(seconds)
    _client.rpush(TIMINGS, json.dumps([sent_at, started, time.time()]))

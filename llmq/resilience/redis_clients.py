"""Redis clients, made one way for the API and the workers: fail fast when Redis is down.

Every caller (cache, circuit breaker, rate limits, events, key limits, heartbeats) treats a Redis
error as an outage it handles itself, so the client must report one quickly, not retry it away.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmq.settings import Settings


def redis_client(settings: Settings, timeout_s: float = 5.0) -> redis.Redis:
    """redis-py's default retries a refused call 10 times with backoff (seconds per call while
    Redis is down). One quick retry rides over a connection that went stale with a Redis
    restart; anything longer is an outage, which callers handle."""
    return redis.Redis.from_url(
        settings.redis_url or "redis://127.0.0.1:6379/0",
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        # Connection errors only: a timeout retried is another full timeout.
        retry=Retry(NoBackoff(), retries=1, supported_errors=(redis.ConnectionError,)),
    )

"""Per-API-key rate limits shared by every API instance: requests per minute (every
authenticated call) and items per minute (jobs submitted, one per batch item).

Both are sliding-window logs in Redis (llmq/resilience/ratelimit.py), so two API processes behind a
load balancer draw on one budget. If Redis is unreachable, requests go through: the limiter guards
capacity, it is not an authorization check.
"""

from __future__ import annotations

import math

import redis

from llmq.resilience.ratelimit import Limit, RateLimiter
from llmq.settings import Settings
from llmq.store import Principal

from .errors import ApiError

WINDOW_S = 60.0


class KeyLimiter:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._limiter = RateLimiter(client, {}, window_s=WINDOW_S)
        self._settings = settings

    def check_request(self, who: Principal) -> None:
        per_min = _pick(who.requests_per_min, self._settings.key_requests_per_min)
        wait = self._limiter.acquire_limit(f"key:{who.key_id}:requests", Limit(requests=per_min), 0)
        if wait > 0:
            raise _too_many(wait, f"this API key is limited to {per_min} requests per minute")

    def check_items(self, who: Principal, items: int) -> None:
        per_min = _pick(who.items_per_min, self._settings.key_items_per_min)
        # An ask bigger than the whole budget is admitted only into an empty window.
        wait = self._limiter.acquire_limit(f"key:{who.key_id}:items", Limit(tokens=per_min), items)
        if wait > 0:
            raise _too_many(
                wait, f"this API key may submit {per_min} items per minute; this asks for {items}"
            )


def _pick(own: int | None, default: int) -> int:
    return default if own is None else own


def _too_many(wait_s: float, message: str) -> ApiError:
    retry_after = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        "rate_limited",
        f"{message}; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )

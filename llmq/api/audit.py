"""What the API records in the audit log besides the store's own writes: downloads (before a
byte is served, so a download the log cannot record is refused: fail closed) and bursts of
failed authentication (best effort: the request has already failed, and an attacker must not
be able to turn a 401 into a 500 or fill the table).

A burst is LLMQ's `BURST_FAILURES` failed authentications from one client IP within
`BURST_WINDOW_S`: counted in Redis (shared by every API process), one audit row when the count
reaches the threshold, none for the rest of that window, and at most `MAX_BURST_ROWS_PER_MIN`
rows a minute over all IPs, so many addresses cannot flood the log either.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from fastapi import Request
from sqlalchemy import Engine

from llmq import store
from llmq.store import Principal

log = logging.getLogger("llmq.api.audit")

BURST_FAILURES = 10
BURST_WINDOW_S = 60
MAX_BURST_ROWS_PER_MIN = 30


def record_download(
    engine: Engine, who: Principal, action: str, target: str, **details: Any
) -> None:
    """Record who downloaded what (never the content). Raises if the row cannot be written:
    the caller then serves nothing (a database outage is the usual 503)."""
    store.record_event(
        engine,
        store.AuditEvent(
            str(who.key_id),
            action,
            who.tenant_id,
            target,
            {k: v for k, v in details.items() if v is not None},
        ),
    )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class AuthFailureMonitor:
    """Counts failed authentications per client IP and records one `auth.failed_burst` row
    per burst."""

    def __init__(self, client: redis.Redis, engine: Engine) -> None:
        self._redis = client
        self._engine = engine

    def failed(self, request: Request, reason: str) -> None:
        ip = client_ip(request)
        try:
            count = self._count(f"llmq:authfail:{ip}", BURST_WINDOW_S)
            if count != BURST_FAILURES:
                return
            minute = int(time.time() // 60)
            if self._count(f"llmq:authfail:rows:{minute}", 120) > MAX_BURST_ROWS_PER_MIN:
                log.warning(
                    "auth failure bursts over %d/min: not all recorded", MAX_BURST_ROWS_PER_MIN
                )
                return
            details = {"failures": count, "window_s": BURST_WINDOW_S, "reason": reason,
                       "path": request.url.path[:200]}  # fmt: skip
            store.record_event(
                self._engine, store.AuditEvent("system", "auth.failed_burst", None, ip, details)
            )
        except Exception as exc:  # best effort by design (module docstring)
            log.warning("auth failure burst not recorded: %s", type(exc).__name__)

    def _count(self, key: str, ttl_s: int) -> int:
        pipe = self._redis.pipeline()
        pipe.set(key, 0, ex=ttl_s, nx=True)  # the window starts at the first failure
        pipe.incr(key)
        _, count = pipe.execute()
        return int(count)

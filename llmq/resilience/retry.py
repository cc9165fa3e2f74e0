"""The retry schedule: capped exponential backoff with equal jitter, Retry-After first.

    delay(n) = d/2 + uniform(0, d/2)   where d = min(cap, base * 2**n), n = 0 for the 1st retry

Equal jitter keeps at least half the exponential wait (so a storm of clients backs off for real)
while spreading retries over the other half (so they do not return in lockstep). When the
provider sends Retry-After / retry-after-ms, that wait wins: it knows when capacity returns.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # per chain link, including the first call
    base_s: float = 0.5
    cap_s: float = 20.0
    retry_after_cap_s: float = 300.0
    inline_max_s: float = 2.0  # waits up to this long happen in the worker; longer ones re-queue

    def delay(self, retry_no: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `retry_no` (0-based)."""
        if retry_after_s is not None:
            return min(max(0.0, retry_after_s), self.retry_after_cap_s)
        ceiling = min(self.cap_s, self.base_s * (2**retry_no))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def should_defer(self, delay_s: float) -> bool:
        """True when a wait is too long to spend holding a worker slot."""
        return delay_s > self.inline_max_s


T = TypeVar("T")


def retry_call(
    call: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    budget_s: float,
    policy: RetryPolicy,
    sleep: Callable[[float], object],
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`call()`, tried again after `policy.delay` on `retry_on` until `budget_s` would be
    exceeded (counting both the clock and the waits, so an injected `sleep` ends it too); the
    last error is raised."""
    started = clock()
    waited = 0.0
    retry_no = 0
    while True:
        try:
            return call()
        except retry_on:
            delay = policy.delay(retry_no, rng)
            if max(clock() - started, waited) + delay > budget_s:
                raise
            sleep(delay)
            waited += delay
            retry_no += 1

"""Skip an optional dependency for a moment after it failed, instead of paying its timeout again
on every call while it is down (a hung Redis answers nothing: each call waits a full timeout)."""

from __future__ import annotations

import time
from collections.abc import Callable


class OutageMemo:
    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_s = hold_s
        self._clock = clock
        self._until = float("-inf")

    def available(self) -> bool:
        """False for `hold_s` after the last failure: callers take their fallback at once."""
        return self._clock() >= self._until

    def failed(self) -> None:
        self._until = self._clock() + self._hold_s

"""Small helpers for tests: waiting on conditions (with a deadline), service handles."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Services:
    database_url: str
    redis_url: str
    data_dir: Path
    embedded: Any


def wait_for(probe: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `probe` until it returns a truthy value; fail with `what` after `timeout`.

    The system under test is another process whose only observable signal is its state in
    Postgres or over HTTP, so polling with a deadline is the event wait here.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}

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


def submit_batch(
    engine: Any,
    env: dict[str, str],
    tenant_id: Any,
    chain: list[str],
    inputs: list[str],
    template: str = "summarize",
) -> Any:
    """Insert a batch and publish its fan-out on `env`'s broker (not this process's default)."""
    from llmq import repository
    from workers.celery_app import make_celery
    from workers.dispatch import DISPATCH_BATCH

    batch_id = repository.insert_batch(
        engine, tenant_id=tenant_id, template=template, template_version=1,
        priority="default", chain=chain, meta={},
        items=[repository.NewJob(input=text, custom_id=str(i)) for i, text in enumerate(inputs)],
    )  # fmt: skip
    make_celery(env["REDIS_URL"]).send_task(DISPATCH_BATCH, args=[str(batch_id)],
                                            queue="llm.default")  # fmt: skip
    return batch_id

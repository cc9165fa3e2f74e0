"""Small helpers for tests: waiting on conditions (with a deadline), service handles."""

from __future__ import annotations

import itertools
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
    from llmq import store
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import DISPATCH_BATCH

    batch_id = store.insert_batch(
        engine, tenant_id=tenant_id, template=template, template_version=1,
        priority="default", chain=chain, meta={},
        items=[store.NewJob(input=text, custom_id=str(i)) for i, text in enumerate(inputs)],
    )  # fmt: skip
    make_celery(env["REDIS_URL"]).send_task(DISPATCH_BATCH, args=[str(batch_id)],
                                            queue="llm.default")  # fmt: skip
    return batch_id


# Redis has 16 databases; 0 is the shared stack's. Reused in turn (each is flushed when taken):
# an isolated stack lives for one test or one module, far fewer than 15 allocations.
_redis_db_counter = itertools.cycle(range(1, 16))


def make_isolated_env(services: Services, stack_env: dict[str, str]) -> dict[str, str]:
    """A stack environment with its own new database and Redis DB (see `isolated_env`)."""
    import uuid

    import psycopg
    import redis
    from sqlalchemy.engine import make_url

    from llmq.store.migrate import upgrade

    url = make_url(services.database_url)
    name = f"llmq_iso_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    database_url = url.set(database=name).render_as_string(hide_password=False)
    upgrade(database_url)
    redis_url = services.redis_url.rsplit("/", 1)[0] + f"/{next(_redis_db_counter)}"
    redis.Redis.from_url(redis_url).flushdb()
    return {**stack_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url}


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0.0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def database_text(engine: Any) -> str:
    """Every row of every table as text, plus every binary column decoded as UTF-8 (a row's
    text shows bytea as hex): what a breach of the database would expose."""
    from sqlalchemy import text

    with engine.connect() as conn:
        tables = list(
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
        )
        found = [
            row
            for table in tables
            for row in conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars()
        ]
        binary = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type = 'bytea'"
            )
        ).all()
        for table, column in binary:
            values = conn.execute(
                text(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL')
            ).scalars()
            found.extend(bytes(value).decode("utf-8", errors="replace") for value in values)
    return "\n".join(found)


def luhn_card() -> str:
    """A fresh Visa-shaped number that passes Luhn, so no other test can have stored it."""
    import random

    digits = [4, *(random.randint(0, 9) for _ in range(14))]
    total = 0
    for position, d in enumerate(reversed(digits)):
        d = d * 2 if position % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    return "".join(map(str, digits))

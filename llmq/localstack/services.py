"""Which PostgreSQL and Redis to use: the configured URLs, or the embedded default."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from llmq.errors import UserError
from llmq.settings import Settings


class ServiceConfigError(UserError):
    pass


def database_url(settings: Settings) -> str:
    """DATABASE_URL, else the embedded server that a running `llmq up` recorded."""
    from llmq.localstack.embedded import running_services

    if settings.database_url:
        return settings.database_url
    recorded = running_services(settings.data_dir)
    if recorded:
        return recorded["DATABASE_URL"]
    raise ServiceConfigError(
        "DATABASE_URL is not set and no `llmq up` is running in this directory"
    )


@contextlib.contextmanager
def services(settings: Settings, data_dir: Path, *, durable: bool) -> Iterator[dict[str, str]]:
    """URLs to use: the configured ones, or embedded servers started now and stopped after."""
    if settings.database_url and settings.redis_url:
        yield {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
        return
    if settings.database_url or settings.redis_url:
        raise ServiceConfigError("set both DATABASE_URL and REDIS_URL, or neither (embedded)")
    from llmq.localstack.embedded import embedded_services

    print(f"starting embedded PostgreSQL and Redis under {data_dir} ...", file=sys.stderr)
    with embedded_services(data_dir, durable=durable) as running:
        yield {"DATABASE_URL": running.database_url, "REDIS_URL": running.redis_url}

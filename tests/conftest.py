"""Shared fixtures: real PostgreSQL and Redis (DATABASE_URL / REDIS_URL when given, else the
embedded servers), the fake provider, and real Celery worker processes."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from llmq.localstack.embedded import free_port
from llmq.settings import get_settings
from llmq.testing.fake_provider import FakeProviderServer

from .helpers import Services, make_isolated_env


def _external_database(base_url: str) -> str:
    """A fresh database on the given server, so tests never touch the user's data."""
    from sqlalchemy.engine import make_url

    url = make_url(base_url.replace("postgres://", "postgresql://", 1))
    name = f"llmq_test_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return url.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    data_dir = Path(tempfile.mkdtemp(prefix="llmq-test-"))
    if database_url and redis_url:
        yield Services(_external_database(database_url), redis_url, data_dir, embedded=None)
        return
    from llmq.localstack.embedded import embedded_services

    with embedded_services(data_dir, durable=False) as running:
        yield Services(running.database_url, running.redis_url, data_dir, embedded=running)


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture(scope="session")
def stack_env(services: Services, fake_provider: FakeProviderServer) -> dict[str, str]:
    """Environment of every llmq process in the integration tests (and of this one). Autouse
    there (tests/integration/conftest.py): the Celery app binds its broker when
    `llmq.workers` is first imported, so this must come first. Unit tests start no service."""
    env = {
        "DATABASE_URL": services.database_url,
        "REDIS_URL": services.redis_url,
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": fake_provider.anthropic_base_url,
        "LLMQ_JOB_LEASE_S": "4",
        "LLMQ_RECONCILE_INTERVAL_S": "0.5",
        "LLMQ_DISPATCH_GRACE_S": "2",
        "LLMQ_RETRY_BASE_S": "0.05",
        "LLMQ_RETRY_CAP_S": "0.5",
        "LLMQ_PROVIDER_READ_TIMEOUT_S": "5",
        # Batch API: a test signing key, and webhook redelivery in tenths of a second.
        "LLMQ_WEBHOOK_SIGNING_KEY": "test-webhook-master-key",
        "LLMQ_WEBHOOK_BACKOFF_BASE_S": "0.2",
        # The receivers in the tests listen on 127.0.0.1.
        "LLMQ_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    os.environ.update(env)
    get_settings.cache_clear()
    from llmq.store.migrate import upgrade

    upgrade(services.database_url)
    return env


@pytest.fixture(scope="session")
def engine(stack_env: dict[str, str]) -> Engine:
    from llmq.store.engine import get_engine

    return get_engine(stack_env["DATABASE_URL"])


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """Where the shared worker serves its Prometheus metrics."""
    return free_port()


@pytest.fixture(scope="session")
def worker(
    stack_env: dict[str, str], services: Services, worker_metrics_port: int
) -> Iterator[Any]:
    """One real Celery worker process on all three queues, shared by the tests."""
    from llmq.localstack.processes import Stack

    stack = Stack(env=stack_env, log_dir=services.data_dir / "logs")
    stack.start_worker(
        "shared",
        queues="llm.high,llm.default,llm.low",
        concurrency=20,
        pool="threads",
        metrics_port=worker_metrics_port,
    )
    yield stack
    stack.stop()


@pytest.fixture()
def new_key(engine: Engine) -> Callable[[], str]:
    from llmq import store

    def make() -> str:
        return store.create_api_key(engine, f"tenant-{uuid.uuid4().hex[:8]}")

    return make


@pytest.fixture(scope="session")
def app(stack_env: dict[str, str]) -> Any:
    from llmq.api.app import create_app

    return create_app()


@pytest.fixture()
def http(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def isolated_env(services: Services, stack_env: dict[str, str]) -> dict[str, str]:
    """A stack environment with its own database and Redis DB: for tests that start and kill
    their own workers, so the shared worker never sees their jobs (nor they its)."""
    return make_isolated_env(services, stack_env)

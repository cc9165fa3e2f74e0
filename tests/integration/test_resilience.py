"""Nothing is lost when a worker, Redis or Postgres dies mid-batch.

Each test runs on its own embedded PostgreSQL and Redis (so it may kill and restart them) with
real Celery worker processes and the fake provider, and checks the record of truth afterwards:
every job ended exactly once, attempts are unique, and job totals equal the sum of attempts.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from llmq import repository
from llmq.db.engine import get_engine
from llmq.db.migrate import upgrade
from llmq.embedded import EmbeddedServices, embedded_services
from llmq.fake_provider import FakeProviderServer, FakeScript
from llmq.stack import Stack

from ..helpers import submit_batch, wait_for

pytestmark = pytest.mark.slow
JOBS = 60


@dataclass
class Rig:
    services: EmbeddedServices
    env: dict[str, str]
    engine: Engine
    stack: Stack
    tenant_id: uuid.UUID

    def submit(self, n: int = JOBS) -> uuid.UUID:
        inputs = [
            f"Report {i}: the river rose two metres overnight. Crews built levees. Nobody was hurt."
            for i in range(n)
        ]
        batch_id: uuid.UUID = submit_batch(
            self.engine, self.env, self.tenant_id, ["openai:gpt-4o-mini"], inputs
        )
        return batch_id

    def count(self, batch_id: uuid.UUID, status: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM jobs WHERE batch_id = :b AND status = :s"),
                    {"b": batch_id, "s": status},
                ).scalar_one()
            )

    def wait_count(
        self, batch_id: uuid.UUID, status: str, at_least: int, timeout: float = 120
    ) -> None:
        def reached() -> bool:
            try:
                return self.count(batch_id, status) >= at_least
            except Exception:  # Postgres may be restarting; keep waiting
                return False

        wait_for(reached, timeout, f"{at_least} jobs {status}")

    def assert_exactly_once(self, batch_id: uuid.UUID) -> dict[str, int]:
        with self.engine.connect() as conn:
            statuses = dict(
                conn.execute(
                    text("SELECT status, count(*) FROM jobs WHERE batch_id = :b GROUP BY status"),
                    {"b": batch_id},
                ).all()
            )
            mismatched = conn.execute(
                text(
                    "SELECT count(*) FROM jobs j WHERE j.batch_id = :b AND ("
                    " j.attempts_made <> (SELECT count(*) FROM attempts a WHERE a.job_id = j.id)"
                    " OR j.input_tokens <> (SELECT coalesce(sum(input_tokens), 0) FROM attempts a"
                    "   WHERE a.job_id = j.id)"
                    " OR j.cost_usd IS DISTINCT FROM (SELECT sum(cost_usd) FROM attempts a"
                    "   WHERE a.job_id = j.id))"
                ),
                {"b": batch_id},
            ).scalar_one()
            ok_attempts = dict(
                conn.execute(
                    text(
                        "SELECT j.id, count(*) FROM jobs j JOIN attempts a ON a.job_id = j.id "
                        "WHERE j.batch_id = :b AND a.outcome = 'ok' GROUP BY j.id"
                    ),
                    {"b": batch_id},
                ).all()
            )
            redelivered = conn.execute(
                text("SELECT count(*) FROM jobs WHERE batch_id = :b AND deliveries > 1"),
                {"b": batch_id},
            ).scalar_one()
        assert statuses == {"succeeded": JOBS}
        assert mismatched == 0
        assert len(ok_attempts) == JOBS
        return {
            "redelivered": int(redelivered),
            "extra_ok_attempts": sum(ok_attempts.values()) - JOBS,
        }


@pytest.fixture()
def rig(fake_provider: FakeProviderServer) -> Iterator[Rig]:
    data_dir = Path(tempfile.mkdtemp(prefix="llmq-chaos-"))
    with embedded_services(data_dir, durable=False) as services:
        upgrade(services.database_url)
        env = {
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": fake_provider.openai_base_url,
            "LLMQ_JOB_LEASE_S": "3",
            "LLMQ_RECONCILE_INTERVAL_S": "0.5",
            "LLMQ_DISPATCH_GRACE_S": "2",
            "LLMQ_RETRY_BASE_S": "0.05",
            "LLMQ_RETRY_CAP_S": "0.5",
            "LLMQ_PROVIDER_READ_TIMEOUT_S": "5",
        }
        engine = get_engine(services.database_url)
        key = repository.create_api_key(engine, "chaos")
        principal = repository.authenticate(engine, key)
        assert principal is not None
        stack = Stack(env=env, log_dir=data_dir / "logs")
        fake_provider.set_script(FakeScript(latency_ms=150))
        try:
            yield Rig(services, env, engine, stack, principal.tenant_id)
        finally:
            stack.stop(timeout=20)
            engine.dispose()
            fake_provider.set_script(FakeScript())


def _worker(rig: Rig, name: str) -> Any:
    return rig.stack.start_worker(
        name, queues="llm.high,llm.default,llm.low", concurrency=6, pool="threads"
    )


def test_kill_9_a_worker_mid_batch(rig: Rig) -> None:
    batch_id = rig.submit()
    victim = _worker(rig, "victim")
    rig.wait_count(batch_id, "succeeded", 15)
    victim.proc.kill()  # SIGKILL: no shutdown hooks, in-flight jobs abandoned
    victim.proc.wait(timeout=10)
    assert rig.count(batch_id, "running") > 0  # it really died holding work
    _worker(rig, "rescuer")
    rig.wait_count(batch_id, "succeeded", JOBS)
    stats = rig.assert_exactly_once(batch_id)
    assert stats["redelivered"] >= 1


def test_redis_flushall_mid_batch(rig: Rig) -> None:
    batch_id = rig.submit()
    _worker(rig, "w1")
    rig.wait_count(batch_id, "succeeded", 10)
    redis.Redis.from_url(rig.env["REDIS_URL"]).flushall()  # every queued message is gone
    rig.wait_count(batch_id, "succeeded", JOBS)
    rig.assert_exactly_once(batch_id)


def test_redis_restart_mid_batch(rig: Rig) -> None:
    batch_id = rig.submit()
    _worker(rig, "w1")
    rig.wait_count(batch_id, "succeeded", 10)
    rig.services.redis.stop(kill=True)  # no persistence: the queue dies with it
    rig.services.redis.start()  # same port, empty
    rig.wait_count(batch_id, "succeeded", JOBS)
    rig.assert_exactly_once(batch_id)


def test_postgres_restart_mid_batch(rig: Rig) -> None:
    batch_id = rig.submit()
    _worker(rig, "w1")
    rig.wait_count(batch_id, "succeeded", 10)
    rig.services.postgres.stop(kill=True)
    rig.services.postgres.start()  # same port and data, crash recovery
    rig.wait_count(batch_id, "succeeded", JOBS)
    rig.assert_exactly_once(batch_id)

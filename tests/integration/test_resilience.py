"""Nothing is lost when a worker, Redis or Postgres dies mid-batch.

Each test runs on its own embedded PostgreSQL and Redis (so it may kill and restart them) with
real Celery worker processes and the fake provider, and checks the record of truth afterwards:
every job ended exactly once, attempts are unique, and job totals equal the sum of attempts.
"""

from __future__ import annotations

import signal
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
from llmq.fake_provider import FakeProviderServer, FakeScript, FaultRule
from llmq.stack import Stack

from ..helpers import submit_batch, wait_for

pytestmark = pytest.mark.slow
JOBS = 60
DOC = "The river rose two metres overnight. Crews built levees. Nobody was hurt."


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


def _statuses(rig: Rig, batch_id: uuid.UUID) -> dict[str, list[str]]:
    with rig.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id::text, status FROM jobs WHERE batch_id = :b"), {"b": batch_id}
        ).all()
    out: dict[str, list[str]] = {}
    for job_id, status in rows:
        out.setdefault(status, []).append(job_id)
    return out


def test_sigterm_lets_in_flight_jobs_finish_and_leaves_the_rest_queued(
    rig: Rig, fake_provider: FakeProviderServer
) -> None:
    fake_provider.set_script(FakeScript(latency_ms=1500))
    batch_id = rig.submit()
    worker = _worker(rig, "draining")
    wait_for(lambda: len(_statuses(rig, batch_id).get("running", [])) == 6, 60, "6 jobs running")
    in_flight = set(_statuses(rig, batch_id)["running"])
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0  # warm shutdown: exits cleanly once they finish
    after = _statuses(rig, batch_id)
    assert in_flight <= set(after["succeeded"])  # the in-flight calls were not thrown away
    assert "running" not in after  # nothing was abandoned holding a lease
    assert len(after["succeeded"]) + len(after["queued"]) == JOBS
    fake_provider.set_script(FakeScript(latency_ms=50))
    _worker(rig, "successor")
    rig.wait_count(batch_id, "succeeded", JOBS)
    stats = rig.assert_exactly_once(batch_id)
    assert stats == {"redelivered": 0, "extra_ok_attempts": 0}


def test_a_job_that_keeps_killing_its_worker_ends_failed_and_the_rest_succeed(
    rig: Rig, fake_provider: FakeProviderServer
) -> None:
    # The poison document makes the provider call hang; each worker that takes it is killed.
    fake_provider.set_script(FakeScript(rules=[FaultRule(model="poison", fault="hang", hang_s=60)]))
    rig.env["LLMQ_MAX_DELIVERIES"] = "2"
    poison = submit_batch(rig.engine, rig.env, rig.tenant_id, ["openai:poison"], [DOC])
    healthy = rig.submit(10)

    def poison_status() -> tuple[str, int]:
        with rig.engine.connect() as conn:
            row = conn.execute(
                text("SELECT status, deliveries FROM jobs WHERE batch_id = :b"), {"b": poison}
            ).one()
        return str(row[0]), int(row[1])

    for delivery in (1, 2):
        victim = _worker(rig, f"victim{delivery}")
        wait_for(lambda d=delivery: poison_status() == ("running", d), 60, f"delivery {delivery}")
        victim.proc.kill()
        victim.proc.wait(timeout=10)
    _worker(rig, "survivor")
    wait_for(lambda: poison_status()[0] == "failed", 60, "the poison job to be given up")
    with rig.engine.connect() as conn:
        code = conn.execute(
            text("SELECT error_code FROM jobs WHERE batch_id = :b"), {"b": poison}
        ).scalar_one()
    assert code == "worker_lost"
    rig.wait_count(healthy, "succeeded", 10)


def test_error_storm_30pct_500s_and_429s_every_job_succeeds_honouring_retry_after(
    rig: Rig, fake_provider: FakeProviderServer
) -> None:
    fake_provider.set_script(
        FakeScript(
            latency_ms=20,
            seed=7,
            rules=[
                FaultRule(fault="status", status=500, probability=0.3),
                FaultRule(fault="status", status=429, retry_after=1.0, probability=0.1),
            ],
        )
    )
    rig.env.update(LLMQ_RETRY_MAX_ATTEMPTS="6", ANTHROPIC_API_KEY="test-key",
                   ANTHROPIC_BASE_URL=fake_provider.anthropic_base_url)  # fmt: skip
    inputs = [f"Storm report {i}: {DOC}" for i in range(200)]
    chain = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    batch_id = submit_batch(rig.engine, rig.env, rig.tenant_id, chain, inputs)
    for name in ("storm1", "storm2"):
        rig.stack.start_worker(name, queues="llm.default", concurrency=20, pool="threads")
    wait_for(
        lambda: (
            "queued" not in (s := _statuses(rig, batch_id))
            and "running" not in s
            and "retrying" not in s
        ),
        180,
        "every job to end",
    )
    with rig.engine.connect() as conn:
        statuses = dict(
            conn.execute(
                text("SELECT status, count(*) FROM jobs WHERE batch_id = :b GROUP BY status"),
                {"b": batch_id},
            ).all()
        )
        outcomes = dict(
            conn.execute(
                text(
                    "SELECT a.outcome, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
                    "WHERE j.batch_id = :b GROUP BY a.outcome"
                ),
                {"b": batch_id},
            ).all()
        )
        # The wait after each 429 (Retry-After: 1 s) until the same job's next call to that
        # provider was sent (moving on to the next link needs no wait).
        gaps = (
            conn.execute(
                text(
                    "SELECT extract(epoch FROM n.created_at - a.created_at) - n.latency_ms / 1000 "
                    "FROM attempts a JOIN jobs j ON j.id = a.job_id JOIN attempts n "
                    "ON n.job_id = a.job_id AND n.attempt_no = a.attempt_no + 1 "
                    "AND n.provider = a.provider "
                    "WHERE j.batch_id = :b AND a.outcome = 'rate_limited'"
                ),
                {"b": batch_id},
            )
            .scalars()
            .all()
        )
    assert statuses == {"succeeded": 200}
    assert outcomes["ok"] == 200  # one answer per job, none paid twice
    assert outcomes["server_error"] >= 30 and outcomes["rate_limited"] >= 5
    assert gaps and min(gaps) >= 0.95, f"a retry came {min(gaps):.3f} s after a 429"
    failures = outcomes["server_error"] + outcomes["rate_limited"]
    assert fake_provider.stats()["requests"] >= 200 + failures

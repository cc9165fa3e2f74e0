"""Fault scenarios a user can run (`scripts/chaos.py`) and the tests assert on.

Each scenario runs a batch on a private stack (embedded PostgreSQL and Redis that it may kill
and restart, real Celery worker processes, a fake provider) while it breaks something, then
checks the record of truth: every job ended exactly once, attempts are unique, job totals equal
the sum of their attempts, and no job got two paid answers.
"""

from __future__ import annotations

import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from llmq import store
from llmq.localstack.embedded import EmbeddedServices, embedded_services
from llmq.localstack.processes import Child, Stack
from llmq.store.engine import get_engine
from llmq.store.migrate import upgrade
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

DOC = "The river rose two metres overnight. Crews built levees along the bank. Nobody was hurt."
QUEUES = "llm.high,llm.default,llm.low"


def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll an observable condition (state in Postgres) with a deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception:  # the database may be the thing being restarted
            value = None
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Rig:
    services: EmbeddedServices
    fake: FakeProviderServer
    env: dict[str, str]
    engine: Engine
    stack: Stack
    tenant_id: uuid.UUID

    def submit(
        self, n: int, chain: list[str] | None = None, text_: str = DOC, lane: str = "sync"
    ) -> uuid.UUID:
        """Insert a batch and publish its fan-out on this rig's broker."""
        batch_id = store.insert_batch(
            self.engine, tenant_id=self.tenant_id, template="summarize", template_version=1,
            priority="default", chain=chain or ["openai:gpt-4o-mini"], meta={}, lane=lane,
            items=[store.NewJob(input=f"Report {i}: {text_}", custom_id=str(i))
                   for i in range(n)],
        )  # fmt: skip
        # Imported here: importing `workers` binds the default Celery app to the environment's
        # broker, and this module is imported while test modules are collected (before the
        # test session sets REDIS_URL), which sent the suite's in-process publishes elsewhere.
        from llmq.workers.celery_app import make_celery
        from llmq.workers.dispatch import DISPATCH_BATCH

        make_celery(self.env["REDIS_URL"]).send_task(
            DISPATCH_BATCH, args=[str(batch_id)], queue="llm.default"
        )
        return batch_id

    def worker(self, name: str, concurrency: int = 6, queues: str = QUEUES) -> Child:
        return self.stack.start_worker(name, queues=queues, concurrency=concurrency, pool="threads")

    def statuses(self, batch_id: uuid.UUID) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for job_id, status in store.batch_job_statuses(self.engine, batch_id):
            out.setdefault(status, []).append(job_id)
        return out

    def count(self, batch_id: uuid.UUID, status: str) -> int:
        return len(self.statuses(batch_id).get(status, []))

    def wait_count(self, batch_id: uuid.UUID, status: str, n: int, timeout: float = 120) -> None:
        wait_until(lambda: self.count(batch_id, status) >= n, timeout, f"{n} jobs {status}")

    def wait_ended(self, batch_id: uuid.UUID, timeout: float = 180) -> None:
        live = {"queued", "running", "retrying"}
        wait_until(lambda: not live & set(self.statuses(batch_id)), timeout, "every job to end")

    def audit(self, batch_id: uuid.UUID) -> Audit:
        return Audit(**asdict(store.audit_batch(self.engine, batch_id)))


@dataclass
class Audit(store.BatchAudit):
    """The record's exactly-once figures, and what the scenario saw."""

    observed: dict[str, Any] = field(default_factory=dict)  # what the scenario saw mid-run
    # Set by the scenarios that count them (0 elsewhere): provider calls without an attempt row,
    # and jobs that waited for their lease to expire (a redelivery where no worker died).
    unrecorded_calls: int = 0
    lease_waits: int = 0

    def exactly_once(self, jobs: int) -> bool:
        return (
            self.statuses == {"succeeded": jobs}
            and self.totals_mismatched == 0
            and self.jobs_paid_twice == 0
            and self.unrecorded_calls == 0
            and self.lease_waits == 0
        )


@contextmanager
def rig(*, latency_ms: float = 150, env: dict[str, str] | None = None) -> Iterator[Rig]:
    """A private stack for one scenario; `env` overrides settings of its worker processes."""
    data_dir = Path(tempfile.mkdtemp(prefix="llmq-chaos-"))
    with (
        embedded_services(data_dir, durable=False) as services,
        FakeProviderServer(FakeScript(latency_ms=latency_ms)) as fake,
    ):
        upgrade(services.database_url)
        full_env = {
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "OPENAI_API_KEY": "chaos-key",
            "OPENAI_BASE_URL": fake.openai_base_url,
            "ANTHROPIC_API_KEY": "chaos-key",
            "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
            # Short leases and a brisk reconciler so a scenario takes seconds, not minutes.
            "LLMQ_JOB_LEASE_S": "3",
            "LLMQ_RECONCILE_INTERVAL_S": "0.5",
            "LLMQ_DISPATCH_GRACE_S": "2",
            "LLMQ_RETRY_BASE_S": "0.05",
            "LLMQ_RETRY_CAP_S": "0.5",
            "LLMQ_PROVIDER_READ_TIMEOUT_S": "5",
            **(env or {}),
        }
        engine = get_engine(services.database_url)
        principal = store.authenticate(engine, store.create_api_key(engine, "chaos"))
        assert principal is not None
        stack = Stack(env=full_env, log_dir=data_dir / "logs")
        try:
            yield Rig(services, fake, full_env, engine, stack, principal.tenant_id)
        finally:
            stack.stop(timeout=20)
            engine.dispose()


# ---------------------------------------------------------------------------------------------
# Scenarios: each breaks one thing mid-batch and returns the audit of the record of truth.


def kill_worker(r: Rig, jobs: int = 60) -> Audit:
    """kill -9 a worker with jobs in flight, then start another."""
    batch_id = r.submit(jobs)
    victim = r.worker("victim")
    r.wait_count(batch_id, "succeeded", jobs // 4)
    victim.proc.kill()  # no shutdown hooks: in-flight jobs are abandoned holding leases
    victim.proc.wait(timeout=10)
    running_at_kill = r.count(batch_id, "running")
    r.worker("rescuer")
    r.wait_ended(batch_id)
    audit = r.audit(batch_id)
    audit.observed["running_at_kill"] = running_at_kill
    return audit


def sigterm_worker(r: Rig, jobs: int = 60) -> Audit:
    """SIGTERM a busy worker: in-flight jobs finish, the rest wait for the next worker."""
    r.fake.set_script(FakeScript(latency_ms=1500))
    batch_id = r.submit(jobs)
    worker = r.worker("draining")
    wait_until(lambda: r.count(batch_id, "running") == 6, 60, "6 jobs running")
    in_flight = set(r.statuses(batch_id)["running"])
    worker.proc.send_signal(signal.SIGTERM)
    exit_code = worker.proc.wait(timeout=30)
    after = r.statuses(batch_id)
    r.fake.set_script(FakeScript(latency_ms=50))
    r.worker("successor")
    r.wait_ended(batch_id)
    audit = r.audit(batch_id)
    audit.observed.update(
        exit_code=exit_code,
        in_flight_finished=in_flight <= set(after.get("succeeded", [])),
        left_running=len(after.get("running", [])),
        left_queued=len(after.get("queued", [])),
    )
    return audit


def _break_mid_batch(r: Rig, jobs: int, breakage: Callable[[], object]) -> Audit:
    """Run a batch on one worker, break something once a sixth has succeeded, audit."""
    batch_id = r.submit(jobs)
    r.worker("w1")
    r.wait_count(batch_id, "succeeded", jobs // 6)
    breakage()
    r.wait_ended(batch_id)
    return r.audit(batch_id)


def redis_flush(r: Rig, jobs: int = 60) -> Audit:
    """FLUSHALL the broker mid-batch: every queued message is gone."""
    import redis

    return _break_mid_batch(r, jobs, redis.Redis.from_url(r.env["REDIS_URL"]).flushall)


def _restart(server: Any) -> Callable[[], None]:
    def kill_and_start() -> None:
        server.stop(kill=True)
        server.start()

    return kill_and_start


def redis_restart(r: Rig, jobs: int = 60) -> Audit:
    """Kill Redis (no persistence) and start it again on the same port, empty."""
    return _break_mid_batch(r, jobs, _restart(r.services.redis))


def postgres_restart(r: Rig, jobs: int = 60) -> Audit:
    """Kill PostgreSQL mid-batch and start it again (crash recovery, same data)."""
    return _break_mid_batch(r, jobs, _restart(r.services.postgres))


def refused_connections(r: Rig, jobs: int = 300, refused_s: float = 20) -> Audit:
    """Postgres refuses llmq's connections for 20 s mid-batch while two workers (20 slots
    each) have 1 s provider calls in flight: every paid call ends up as one attempt row, and
    no job waits for its lease to expire."""
    r.fake.set_script(FakeScript(latency_ms=1000))
    batch_id = r.submit(jobs)
    for name in ("refused1", "refused2"):
        r.worker(name, concurrency=20)
    r.wait_count(batch_id, "succeeded", jobs // 6)
    r.engine.dispose()  # its pooled connections are about to be dropped
    with store.connections_refused(r.env["DATABASE_URL"]):
        time.sleep(refused_s)  # the outage itself: there is no event to wait for
    restored = time.monotonic()
    r.wait_ended(batch_id)
    ended_after_s = time.monotonic() - restored
    audit = r.audit(batch_id)
    requests = int(r.fake.stats()["requests"])
    attempts = sum(audit.attempt_outcomes.values())
    audit.unrecorded_calls = requests - attempts
    audit.lease_waits = audit.redelivered
    recovered, cache_hits = store.recovered_and_cache_hits(r.engine, batch_id)
    audit.observed.update(
        provider_requests=requests,
        attempt_rows=attempts,
        # Finished from an answer a previous delivery paid for (parked or recorded).
        recovered=recovered,
        # Distinct documents: a cache hit would be a paid job rewritten after the fact.
        cache_hits=cache_hits,
        ended_s_after_restore=round(ended_after_s, 1),
    )
    return audit


def error_storm(r: Rig, jobs: int = 200) -> Audit:
    """30% of calls fail with 500 and 10% with 429 + Retry-After: 1 s, across two providers."""
    r.fake.set_script(
        FakeScript(
            latency_ms=20,
            seed=7,
            rules=[
                FaultRule(fault="status", status=500, probability=0.3),
                FaultRule(fault="status", status=429, retry_after=1.0, probability=0.1),
            ],
        )
    )
    batch_id = r.submit(jobs, ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
    for name in ("storm1", "storm2"):
        r.worker(name, concurrency=20)
    r.wait_ended(batch_id)
    audit = r.audit(batch_id)
    # After each 429, the wait until that job's next call to the same provider.
    gaps = store.waits_after_rate_limit(r.engine, batch_id)
    audit.observed["min_wait_after_429_s"] = min(gaps) if gaps else None
    audit.observed["provider_requests"] = r.fake.stats()["requests"]
    return audit


def poison_job(r: Rig) -> Audit:
    """A document whose call hangs until its worker is killed, twice: it must end failed
    (worker_lost) while the healthy jobs around it succeed."""
    r.fake.set_script(FakeScript(rules=[FaultRule(model="poison", fault="hang", hang_s=60)]))
    poison = r.submit(1, ["openai:poison"])
    healthy = r.submit(10)

    def poison_state() -> tuple[str, int]:
        status, deliveries, _ = store.only_job_state(r.engine, poison)
        return status, deliveries

    max_deliveries = int(r.env.get("LLMQ_MAX_DELIVERIES", "3"))
    for delivery in range(1, max_deliveries + 1):
        # One slot: when it is killed the victim holds the poison job and nothing else.
        victim = r.worker(f"victim{delivery}", concurrency=1)
        wait_until(_is(poison_state, ("running", delivery)), 60, f"delivery {delivery}")
        victim.proc.kill()
        victim.proc.wait(timeout=10)
    r.worker("survivor")
    wait_until(lambda: poison_state()[0] == "failed", 60, "the poison job to be given up")
    r.wait_ended(healthy)
    audit = r.audit(healthy)
    audit.observed["poison_error_code"] = store.only_job_state(r.engine, poison)[2]
    return audit


def lane_outages(r: Rig, jobs: int = 60) -> Audit:
    """Provider Batch lane: while the jobs are upstream, Redis is flushed, Postgres restarted
    and the worker killed -9; a new worker collects. One upstream batch, every job once."""
    import redis

    r.fake.script_batches(turnaround_s=4)
    created = int(r.fake.stats()["batches_created"]["openai"])
    batch_id = r.submit(jobs, lane="provider_batch")
    victim = r.worker("lane1")

    def upstream() -> bool:
        stats = store.lane_stats(r.engine)
        return stats.get("uploaded", 0) >= 1 and "intent" not in stats

    wait_until(upstream, 60, "the lane's upload")
    redis.Redis.from_url(r.env["REDIS_URL"]).flushall()
    _restart(r.services.postgres)()
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    r.worker("lane2")
    r.wait_ended(batch_id)
    audit = r.audit(batch_id)
    audit.observed["upstream_batches_created"] = (
        int(r.fake.stats()["batches_created"]["openai"]) - created
    )
    return audit


def _is(probe: Callable[[], Any], expected: Any) -> Callable[[], bool]:
    return lambda: bool(probe() == expected)


SCENARIOS: dict[str, Callable[[Rig], Audit]] = {
    "kill-worker": kill_worker,
    "sigterm-worker": sigterm_worker,
    "redis-flush": redis_flush,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "error-storm": error_storm,
    "poison-job": poison_job,
    "refused-connections": refused_connections,
    "lane-outages": lane_outages,
}
# Settings a scenario needs in its workers (fewer deliveries keep poison-job short).
SCENARIO_ENV: dict[str, dict[str, str]] = {
    "error-storm": {"LLMQ_RETRY_MAX_ATTEMPTS": "8"},
    "poison-job": {"LLMQ_MAX_DELIVERIES": "2"},
    # Retries shorter than the outage, so the calls in flight are parked in Redis and their
    # jobs handed over (llmq/execution/paid.py), not only retried through it; a lease longer than
    # the outage, so a job that waited for one shows as a redelivery.
    "refused-connections": {"LLMQ_DB_RETRY_S": "5", "LLMQ_JOB_LEASE_S": "30"},
    # Uploads within a second and brisk polls, so the lane's round trip takes seconds.
    "lane-outages": {
        "LLMQ_BATCH_LANE_MAX_AGE_S": "0.5",
        "LLMQ_BATCH_LANE_INTERVAL_S": "0.2",
        "LLMQ_BATCH_LANE_POLL_S": "0.5",
        "LLMQ_BATCH_LANE_POLL_MAX_S": "1",
    },
}

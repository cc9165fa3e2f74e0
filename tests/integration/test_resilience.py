"""Nothing is lost when a worker, Redis or Postgres dies mid-batch, or a provider storms.

Each test runs one scenario of `llmq.testing.chaos` (the same code `scripts/chaos.py` runs for
users) on its own embedded PostgreSQL and Redis, with real Celery worker processes and a fake
provider, and asserts on the audit of the record of truth: every job ended exactly once,
attempts are unique, job totals equal the sum of attempts, nobody was billed twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmq.testing import chaos

pytestmark = pytest.mark.slow


@pytest.fixture()
def rig(request: pytest.FixtureRequest) -> Iterator[chaos.Rig]:
    name = request.node.get_closest_marker("scenario").args[0]
    with chaos.rig(env=chaos.SCENARIO_ENV.get(name)) as r:
        yield r


@pytest.mark.scenario("kill-worker")
def test_kill_9_a_worker_mid_batch(rig: chaos.Rig) -> None:
    audit = chaos.kill_worker(rig)
    assert audit.observed["running_at_kill"] > 0  # it really died holding work
    assert audit.exactly_once(60), audit
    assert audit.redelivered >= 1


@pytest.mark.scenario("sigterm-worker")
def test_sigterm_lets_in_flight_jobs_finish_and_leaves_the_rest_queued(rig: chaos.Rig) -> None:
    audit = chaos.sigterm_worker(rig)
    assert audit.observed["exit_code"] == 0  # warm shutdown: exits once its jobs are done
    assert audit.observed["in_flight_finished"]  # the in-flight calls were not thrown away
    assert audit.observed["left_running"] == 0  # nothing abandoned holding a lease
    assert audit.observed["left_queued"] >= 40  # the rest waited for the next worker
    assert audit.exactly_once(60), audit
    assert audit.redelivered == 0


@pytest.mark.scenario("redis-flush")
def test_redis_flushall_mid_batch(rig: chaos.Rig) -> None:
    assert chaos.redis_flush(rig).exactly_once(60)


@pytest.mark.scenario("redis-restart")
def test_redis_restart_mid_batch(rig: chaos.Rig) -> None:
    assert chaos.redis_restart(rig).exactly_once(60)


@pytest.mark.scenario("postgres-restart")
def test_postgres_restart_mid_batch(rig: chaos.Rig) -> None:
    assert chaos.postgres_restart(rig).exactly_once(60)


@pytest.mark.scenario("poison-job")
def test_a_job_that_keeps_killing_its_worker_ends_failed_and_the_rest_succeed(
    rig: chaos.Rig,
) -> None:
    audit = chaos.poison_job(rig)
    assert audit.observed["poison_error_code"] == "worker_lost"
    assert audit.exactly_once(10), audit


@pytest.mark.scenario("error-storm")
def test_error_storm_30pct_500s_and_10pct_429s_every_job_succeeds_honouring_retry_after(
    rig: chaos.Rig,
) -> None:
    audit = chaos.error_storm(rig)
    assert audit.exactly_once(200), audit
    assert audit.attempt_outcomes["ok"] == 200  # one billed answer per job
    assert audit.attempt_outcomes["server_error"] >= 30
    assert audit.attempt_outcomes["rate_limited"] >= 5
    assert audit.observed["min_wait_after_429_s"] >= 0.95  # Retry-After: 1 s was honoured
    failed_calls = audit.attempt_outcomes["server_error"] + audit.attempt_outcomes["rate_limited"]
    assert audit.observed["provider_requests"] == 200 + failed_calls  # every call recorded


@pytest.mark.scenario("refused-connections")
def test_postgres_refusing_connections_mid_batch_loses_no_paid_answer(rig: chaos.Rig) -> None:
    audit = chaos.refused_connections(rig)
    assert audit.observed["provider_requests"] == audit.observed["attempt_rows"], audit
    assert audit.lease_waits == 0, audit  # no job waited for its lease to expire
    assert audit.observed["cache_hits"] == 0, audit  # no paid job re-finished as a cache hit
    assert audit.exactly_once(300), audit


@pytest.mark.scenario("lane-outages")
def test_provider_batch_lane_survives_redis_postgres_and_its_worker_dying(
    rig: chaos.Rig,
) -> None:
    audit = chaos.lane_outages(rig)
    assert audit.exactly_once(60), audit
    assert audit.observed["upstream_batches_created"] == 1  # never a second upstream batch

"""In-flight de-duplication of identical jobs (llmq/execution/dedup.py).

* The pipeline as plain Python on real Postgres and Redis: a follower hands its slot back as
  `queued` (never counted as a lost delivery), is woken by its leader and finishes as a cache
  hit; takes over when the leader's lock is gone without an answer; computes itself when the
  leader failed. `no_cache` jobs are never de-duplicated.
* A real worker and its own fake provider: a batch of 20 items with 4 distinct inputs makes
  exactly 4 provider calls, and a job whose leader died takes over after the lock expires.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.execution.cache import ResultCache, cache_key
from llmq.execution.dedup import WAITING, Alone, Cached, Follow, InFlight, Lead
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.providers.local import LocalProvider
from llmq.providers.openai_provider import OpenAIProvider
from llmq.resilience.retry import RetryPolicy
from llmq.settings import CacheScope
from llmq.store.engine import get_engine
from llmq.store.job_store import PostgresJobStore
from llmq.templates import get_template
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import Services, make_isolated_env, metric_value, submit_batch, wait_for

CHAIN = ["openai:gpt-4o-mini"]
MAX_DELIVERIES = 3


def _key(question: str, tenant: uuid.UUID, scope: CacheScope = "tenant") -> str:
    """The cache key the pipeline computes for a `prompt` job without params."""
    rendered = get_template("prompt").render(question, {})
    return cache_key(CHAIN, "prompt", 1, asdict(rendered), {}, scope=scope, tenant_id=tenant)


def _lock(key: str) -> str:
    return "llmq:inflight:" + key.rsplit(":", 1)[-1]


class Woken:
    """The pipeline's wake-up callback: records who was woken and marks them in Postgres, as
    the worker's does before publishing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids: list[str] = []

    def __call__(self, job_ids: list[str]) -> None:
        self.ids.extend(job_ids)
        jobs = [j for j in job_ids if len(j) == 36]  # the lock-level tests use made-up ids
        store.wake_jobs(self.engine, jobs)


@pytest.fixture()
def rclient(services: Services) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url, socket_timeout=5)


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    fake_provider.set_script(FakeScript())
    yield fake_provider
    fake_provider.set_script(FakeScript())


def _new_tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(
        engine, store.create_api_key(engine, f"dedup-{uuid.uuid4().hex[:8]}")
    )
    assert principal is not None
    return principal.tenant_id


@pytest.fixture()
def tenant(engine: Engine) -> uuid.UUID:
    return _new_tenant(engine)


@pytest.fixture()
def cache_scope() -> CacheScope:
    """The pipeline's LLMQ_CACHE_SCOPE; a test parametrizes it to try the other one."""
    return "tenant"


@pytest.fixture()
def woken(engine: Engine) -> Woken:
    return Woken(engine)


@pytest.fixture()
def inflight(rclient: redis.Redis, woken: Woken) -> Iterator[InFlight]:
    flight = InFlight(rclient, lock_s=30, wake=woken)
    yield flight
    flight.stop()


@pytest.fixture()
def pipeline(
    engine: Engine, fake: FakeProviderServer, rclient: redis.Redis, inflight: InFlight,
    cache_scope: CacheScope,
) -> Pipeline:  # fmt: skip
    return Pipeline(
        PostgresJobStore(engine),
        {
            "openai": OpenAIProvider(
                "k", fake.openai_base_url, connect_timeout_s=2.0, read_timeout_s=5.0
            ),
            "local": LocalProvider(),
        },
        load_price_table(),
        PipelineConfig(
            lease_s=30,
            max_deliveries=MAX_DELIVERIES,
            retry=RetryPolicy(max_attempts=1, base_s=0.01, cap_s=0.02),
            cache_scope=cache_scope,
        ),
        sleep=lambda _: None,
        rng=random.Random(0),
        cache=ResultCache(rclient, 600),
        inflight=inflight,
    )


def _job(engine: Engine, tenant: uuid.UUID, question: str, **params: Any) -> str:
    return str(
        store.insert_job(
            engine, tenant_id=tenant, template="prompt", template_version=1,
            priority="default", chain=CHAIN,
            item=store.NewJob(input=question, params=params or None),
        )
    )  # fmt: skip


def _row(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT status, cache_hit, cost_usd, deliveries, lease_owner, route, error_code, "
                "attempts_made, result, not_before > now() AS later FROM jobs WHERE id = :id"
            ),
            {"id": job_id},
        ).one()


def _calls(fake: FakeProviderServer) -> int:
    return int(fake.stats()["requests"])


def _question() -> str:
    return f"What is the capital of country {uuid.uuid4().hex[:10]}?"


def test_a_follower_waits_without_a_slot_and_takes_over_when_the_lock_is_gone(
    engine: Engine, pipeline: Pipeline, fake: FakeProviderServer, rclient: redis.Redis,
    tenant: uuid.UUID, woken: Woken,
) -> None:  # fmt: skip
    question = _question()
    rclient.set(_lock(_key(question, tenant)), "a-leader-elsewhere", px=30_000)  # in flight
    job_id = _job(engine, tenant, question)
    calls = _calls(fake)
    # Handed back again and again while the leader works: never failed as worker_lost.
    for _ in range(MAX_DELIVERIES + 2):
        assert pipeline.run(job_id) == "queued"
        row = _row(engine, job_id)
        assert (row.status, row.deliveries, row.lease_owner) == ("queued", 0, None)
        assert row.route == [WAITING] and row.later  # back at the latest when the lock expires
    assert _calls(fake) == calls and woken.ids == []

    rclient.delete(_lock(_key(question, tenant)))  # the leader died: its lock expired, no answer
    assert pipeline.run(job_id) == "succeeded"
    row = _row(engine, job_id)
    assert (row.cache_hit, row.attempts_made, row.error_code) == (False, 1, None)
    assert row.cost_usd > 0 and _calls(fake) == calls + 1
    assert rclient.exists(_lock(_key(question, tenant))) == 0  # released by the new leader


def test_followers_are_woken_by_their_leader_and_finish_as_cache_hits_at_no_cost(
    engine: Engine, pipeline: Pipeline, inflight: InFlight, fake: FakeProviderServer,
    tenant: uuid.UUID, woken: Woken,
) -> None:  # fmt: skip
    question = _question()
    leader, *followers = [_job(engine, tenant, question) for _ in range(3)]
    assert inflight.enter(_key(question, tenant), leader) == Lead()  # the leader computes
    calls = _calls(fake)
    assert [pipeline.run(f) for f in followers] == ["queued", "queued"]

    assert pipeline.run(leader) == "succeeded"  # the lock names the job: it picks it up again
    assert sorted(woken.ids) == sorted(followers)
    for f in followers:
        assert _row(engine, f).later is None  # published now, not after the delay
        assert pipeline.run(f) == "succeeded"
        row = _row(engine, f)
        assert (row.cache_hit, row.cost_usd, row.attempts_made) == (True, Decimal(0), 0)
        assert row.result == _row(engine, leader).result
        assert row.route == [{"link": "cache", "result": "ok"}]
    assert _calls(fake) == calls + 1


def test_a_leader_failure_does_not_fail_its_followers(
    engine: Engine, pipeline: Pipeline, inflight: InFlight, fake: FakeProviderServer,
    tenant: uuid.UUID, woken: Woken,
) -> None:  # fmt: skip
    question = _question()
    leader, follower = _job(engine, tenant, question), _job(engine, tenant, question)
    assert inflight.enter(_key(question, tenant), leader) == Lead()
    assert pipeline.run(follower) == "queued"
    fake.set_script(FakeScript(rules=[FaultRule(api="openai", fault="status", status=400,
                                                first_n=1)]))  # fmt: skip
    assert pipeline.run(leader) == "failed"
    assert woken.ids == [follower]
    # Woken without an answer: it computes itself instead of waiting for another leader.
    assert pipeline.run(follower) == "succeeded"
    row = _row(engine, follower)
    assert (row.cache_hit, row.attempts_made) == (False, 1)


def test_no_cache_jobs_are_not_deduplicated(
    engine: Engine, pipeline: Pipeline, rclient: redis.Redis, fake: FakeProviderServer,
    tenant: uuid.UUID,
) -> None:  # fmt: skip
    question = _question()
    rclient.set(_lock(_key(question, tenant)), "a-leader-elsewhere", px=30_000)
    job_id = _job(engine, tenant, question, no_cache=True)
    calls = _calls(fake)
    assert pipeline.run(job_id) == "succeeded"
    assert _calls(fake) == calls + 1 and _row(engine, job_id).cache_hit is False


def test_lock_ownership_hand_back_and_the_late_follower(
    inflight: InFlight, rclient: redis.Redis, woken: Woken
) -> None:
    key = "llmq:cache:" + uuid.uuid4().hex
    lock = _lock(key)
    assert inflight.enter(key, "a") == Lead()
    assert isinstance(inflight.enter(key, "b"), Follow)
    inflight.leave(key, "b", "done")  # not the holder: nothing happens
    assert rclient.get(lock) == b"a" and woken.ids == []

    # The leader handed itself back for 40 s: it keeps the lock that long plus a lease.
    inflight.leave(key, "a", "later", 40.0)
    assert rclient.get(lock) == b"a" and rclient.pttl(lock) > 60_000
    follow = inflight.enter(key, "c")
    assert isinstance(follow, Follow) and follow.delay_s > 60
    assert inflight.enter(key, "a") == Lead()  # back from its wait, it leads again

    inflight.leave(key, "a", "done")
    assert sorted(woken.ids) == ["b", "c"] and rclient.exists(lock) == 0
    # "c" wrote its hand-back after the leader had left: it wakes itself.
    inflight.after_hand_back(key, "c")
    assert woken.ids[-1] == "c"

    # A failed leader leaves a short mark: identical jobs then compute on their own.
    assert inflight.enter(key, "d") == Lead()
    inflight.leave(key, "d", "failed")
    assert inflight.enter(key, "e") == Alone()
    rclient.set(key, "{}")  # an answer is cached: nobody needs to lead
    assert inflight.enter(key, "f") == Cached(b"{}")


def test_a_working_leader_keeps_its_lock_alive(services: Services, woken: Woken) -> None:
    client = redis.Redis.from_url(services.redis_url)
    flight = InFlight(client, lock_s=0.6, wake=woken)
    key = "llmq:cache:" + uuid.uuid4().hex
    try:
        assert flight.enter(key, "a") == Lead()
        started = time.monotonic()

        def outlived_three_expiries() -> bool:
            assert client.get(_lock(key)) == b"a"  # renewed every 0.2 s: never gone
            return time.monotonic() - started > 1.8

        wait_for(outlived_three_expiries, 10, "three lock lifetimes")
        flight.leave(key, "a", "done")
        assert client.exists(_lock(key)) == 0
    finally:
        flight.stop()


# ---------------------------------------------------------------------------------------------
# Tenants (LLMQ_CACHE_SCOPE): by default neither the answer nor the in-flight lock is shared, so
# a tenant cannot learn from a free, instant answer that another tenant asked the same.


def test_tenants_do_not_share_answers_by_default(
    engine: Engine, pipeline: Pipeline, fake: FakeProviderServer, tenant: uuid.UUID
) -> None:
    other = _new_tenant(engine)
    question = _question()
    mine, theirs, mine_again = (_job(engine, t, question) for t in (tenant, other, tenant))
    calls = _calls(fake)
    assert pipeline.run(mine) == "succeeded"
    assert pipeline.run(theirs) == "succeeded"
    assert _calls(fake) == calls + 2  # each tenant paid for its own answer
    for job_id in (mine, theirs):
        row = _row(engine, job_id)
        assert (row.cache_hit, row.attempts_made) == (False, 1) and row.cost_usd > 0

    assert pipeline.run(mine_again) == "succeeded"  # the same tenant asking again: a hit
    row = _row(engine, mine_again)
    assert (row.cache_hit, row.cost_usd, row.attempts_made) == (True, Decimal(0), 0)
    assert row.result == _row(engine, mine).result and _calls(fake) == calls + 2


def test_a_tenant_does_not_wait_for_another_tenants_identical_job(
    engine: Engine, pipeline: Pipeline, inflight: InFlight, fake: FakeProviderServer,
    tenant: uuid.UUID, woken: Woken,
) -> None:  # fmt: skip
    other = _new_tenant(engine)
    question = _question()
    leader, theirs = _job(engine, tenant, question), _job(engine, other, question)
    assert inflight.enter(_key(question, tenant), leader) == Lead()  # computing for `tenant`
    calls = _calls(fake)
    assert pipeline.run(theirs) == "succeeded"  # not "queued" behind the other tenant's job
    row = _row(engine, theirs)
    assert (row.cache_hit, row.attempts_made, row.route) == (
        False, 1, [{"link": "openai:gpt-4o-mini", "result": "ok"}],
    )  # fmt: skip
    assert _calls(fake) == calls + 1
    inflight.leave(_key(question, tenant), leader, "failed")
    assert woken.ids == []  # nobody was waiting on the leader


@pytest.mark.parametrize("cache_scope", ["global"])
def test_the_global_scope_shares_answers_and_in_flight_jobs_across_tenants(
    engine: Engine, pipeline: Pipeline, inflight: InFlight, fake: FakeProviderServer,
    tenant: uuid.UUID, woken: Woken,
) -> None:  # fmt: skip
    other = _new_tenant(engine)
    question = _question()
    leader, theirs, later = (_job(engine, t, question) for t in (tenant, other, other))
    assert inflight.enter(_key(question, tenant, "global"), leader) == Lead()
    calls = _calls(fake)
    assert pipeline.run(theirs) == "queued"  # waits for the other tenant's identical job
    assert pipeline.run(leader) == "succeeded"
    assert woken.ids == [theirs]
    for job_id in (theirs, later):
        assert pipeline.run(job_id) == "succeeded"
        row = _row(engine, job_id)
        assert (row.cache_hit, row.cost_usd, row.attempts_made) == (True, Decimal(0), 0)
        assert row.result == _row(engine, leader).result
    assert _calls(fake) == calls + 1


# ---------------------------------------------------------------------------------------------
# A real worker


@pytest.fixture(scope="module")
def stack(services: Services, stack_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """An isolated database, Redis DB, fake provider and worker (so the fake's counts are ours)."""
    with FakeProviderServer() as fake:
        env = {
            **make_isolated_env(services, stack_env),
            "OPENAI_BASE_URL": fake.openai_base_url,
            "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
        }
        port = free_port()
        running = Stack(env=env, log_dir=services.data_dir / "logs-dedup")
        running.start_worker(
            "dedup", queues="llm.high,llm.default,llm.low", concurrency=8, pool="threads",
            metrics_port=port,
        )  # fmt: skip
        try:
            yield {"env": env, "fake": fake, "metrics": f"http://127.0.0.1:{port}/metrics",
                   "engine": get_engine(env["DATABASE_URL"]), "stack": running}  # fmt: skip
        finally:
            running.stop()


def _batch_jobs(engine: Engine, batch_id: uuid.UUID) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT j.id, j.input, j.status, j.cache_hit, j.cost_usd, j.result, "
                    "(SELECT count(*) FROM attempts a WHERE a.job_id = j.id) AS attempts, "
                    "(SELECT sum(a.cost_usd) FROM attempts a WHERE a.job_id = j.id) AS spent "
                    "FROM jobs j WHERE j.batch_id = :b"
                ),
                {"b": batch_id},
            )
        )


def _scrape(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_a_batch_computes_each_distinct_input_once(stack: dict[str, Any]) -> None:
    engine, fake = stack["engine"], stack["fake"]
    principal = store.authenticate(engine, store.create_api_key(engine, "dedup-b"))
    assert principal is not None
    # Slow answers, so identical items are claimed while their first copy is still in flight.
    fake.set_script(FakeScript(latency_ms=1000))
    fake.reset()
    distinct = [_question() for _ in range(4)]
    inputs = [distinct[i % 4] for i in range(20)]
    batch_id = submit_batch(engine, stack["env"], principal.tenant_id, CHAIN, inputs, "prompt")

    def done() -> list[Any] | None:
        jobs = _batch_jobs(engine, batch_id)
        return jobs if all(j.status == "succeeded" for j in jobs) else None

    jobs = wait_for(done, 120, "the batch of identical items")
    assert fake.stats()["requests"] == 4
    computed = [j for j in jobs if not j.cache_hit]
    hits = [j for j in jobs if j.cache_hit]
    assert sorted(j.input for j in computed) == sorted(distinct)
    assert all(j.attempts == 1 and j.cost_usd == j.spent > 0 for j in computed)
    assert len(hits) == 16
    assert all(j.attempts == 0 and j.cost_usd == 0 for j in hits)
    answer = {j.input: j.result for j in computed}
    assert all(j.result == answer[j.input] for j in hits)

    # The totals reconcile: attempts = jobs = the batch = the usage rollup.
    spent = sum((j.spent for j in computed), Decimal(0))
    batch = store.get_batch(engine, principal.tenant_id, batch_id)
    assert batch is not None and batch["cost_usd"] == spent
    assert sum((j.cost_usd for j in jobs), Decimal(0)) == spent
    now = datetime.now(UTC)
    (row,) = store.usage_rollup(
        engine, principal.tenant_id, now - timedelta(hours=1), now + timedelta(hours=1), "batch"
    )
    assert (row["grp"], row["cost_usd"], row["attempts"]) == (str(batch_id), spent, 4)

    # Identical items were held back while their first copy ran, and woken with its answer.
    scraped = wait_for(lambda: _scrape(stack["metrics"]), 30, "the worker's metrics")
    assert metric_value(scraped, "llmq_cache_dedup_total", event="waited") >= 1
    assert metric_value(scraped, "llmq_cache_dedup_total", event="served") >= 1


def test_a_worker_answers_each_tenant_separately(stack: dict[str, Any]) -> None:
    """A worker on the default scope: two tenants submit the same input at once and each job
    calls the provider; the same tenant asking again gets its own cached answer."""
    engine, fake, env = stack["engine"], stack["fake"], stack["env"]
    # The worker's environment (ours plus the stack's) leaves the scope at its default.
    assert {**os.environ, **env}.get("LLMQ_CACHE_SCOPE", "tenant") == "tenant"
    tenants = [_new_tenant(engine) for _ in range(2)]
    # Slow answers: under a shared key the second job would find the first in flight and wait.
    fake.set_script(FakeScript(latency_ms=1000))
    fake.reset()
    question = _question()
    batches = [submit_batch(engine, env, t, CHAIN, [question], "prompt") for t in tenants]

    def finished(batch_id: uuid.UUID) -> Any:
        (job,) = _batch_jobs(engine, batch_id)
        return job if job.status == "succeeded" else None

    first = [wait_for(functools.partial(finished, b), 60, "each tenant's job") for b in batches]
    assert fake.stats()["requests"] == 2
    assert all(not j.cache_hit and j.attempts == 1 and j.cost_usd > 0 for j in first)

    again = submit_batch(engine, env, tenants[0], CHAIN, [question], "prompt")
    job = wait_for(lambda: finished(again), 60, "the same tenant's second job")
    assert (job.cache_hit, job.attempts, job.cost_usd) == (True, 0, Decimal(0))
    assert job.result == first[0].result and fake.stats()["requests"] == 2


def test_a_job_takes_over_when_its_leader_died(stack: dict[str, Any]) -> None:
    engine, fake = stack["engine"], stack["fake"]
    principal = store.authenticate(engine, store.create_api_key(engine, "dedup-t"))
    assert principal is not None
    fake.set_script(FakeScript())
    question = _question()
    client = redis.Redis.from_url(stack["env"]["REDIS_URL"])
    # A leader that died mid-call: its lock stays until it expires, and no answer comes.
    client.set(_lock(_key(question, principal.tenant_id)), "dead-leader", px=2000)
    calls = _calls(fake)
    batch_id = submit_batch(engine, stack["env"], principal.tenant_id, CHAIN, [question], "prompt")

    def waiting() -> bool:
        (job,) = _batch_jobs(engine, batch_id)
        return bool(_row(engine, job.id).route == [WAITING])

    wait_for(waiting, 30, "the job to wait for the identical one")
    (job,) = _batch_jobs(engine, batch_id)
    assert _row(engine, job.id).status == "queued"

    def finished() -> Any:
        row = _row(engine, job.id)
        return row if row.status not in ("queued", "running") else None

    row = wait_for(finished, 60, "the job to take over and finish")
    assert (row.status, row.cache_hit, row.attempts_made, row.error_code) == (
        "succeeded", False, 1, None,
    )  # fmt: skip
    assert row.deliveries == 1 and _calls(fake) == calls + 1

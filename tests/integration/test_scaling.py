"""Horizontal scaling: stateless worker processes share one batch with no job run twice, and a
worker dedicated to llm.high (-Q llm.high) never takes llm.default work."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from llmq import store
from llmq.localstack.processes import Stack
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript

from ..helpers import submit_batch, wait_for

JOBS = 40


@pytest.fixture()
def slow_provider() -> Iterator[FakeProviderServer]:
    # Each call takes a while, so one worker cannot drain the batch before the other has a turn.
    with FakeProviderServer(FakeScript(latency_ms=150)) as server:
        yield server


@pytest.fixture()
def scaled(
    isolated_env: dict[str, str], services: Any, slow_provider: FakeProviderServer
) -> Iterator[tuple[Stack, dict[str, str]]]:
    env = {**isolated_env, "OPENAI_BASE_URL": slow_provider.openai_base_url}
    stack = Stack(env=env, log_dir=services.data_dir / f"logs-scale-{uuid.uuid4().hex[:6]}")
    yield stack, env
    stack.stop()


def wait_for_workers(env: dict[str, str], names: set[str]) -> dict[str, list[str]]:
    """Block until every named worker answers and consumes its queues; return their queues."""
    from llmq.workers.celery_app import make_celery

    control = make_celery(env["REDIS_URL"])

    def consuming() -> dict[str, list[str]] | None:
        replies = control.control.inspect(timeout=1.0).active_queues() or {}
        found = {node.split("@")[0]: [q["name"] for q in qs] for node, qs in replies.items()}
        return found if names <= set(found) else None

    return wait_for(consuming, timeout=60, what=f"workers {sorted(names)} to consume")


def tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(engine, store.create_api_key(engine, "scale"))
    assert principal is not None
    return principal.tenant_id


def attempts_by_job(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job_id::text, worker FROM attempts")).all()
    by_job: dict[str, list[str]] = {}
    for job_id, worker in rows:
        by_job.setdefault(job_id, []).append(worker)
    return by_job


def test_two_worker_processes_share_a_batch_and_run_no_job_twice(
    scaled: tuple[Stack, dict[str, str]],
) -> None:
    stack, env = scaled
    engine = get_engine(env["DATABASE_URL"])
    for name in ("alpha", "beta"):
        stack.start_worker(name, queues="llm.high,llm.default,llm.low", concurrency=2,
                           pool="threads")  # fmt: skip
    wait_for_workers(env, {"alpha", "beta"})
    inputs = [f"Document {i}. Workers share this batch. No job runs twice." for i in range(JOBS)]
    batch_id = submit_batch(engine, env, tenant(engine), ["openai:gpt-4o-mini"], inputs)

    def all_done() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    text("SELECT count(*) FROM jobs WHERE batch_id = :b AND status = 'succeeded'"),
                    {"b": batch_id},
                ).scalar_one()
                == JOBS
            )

    wait_for(all_done, timeout=120, what="the batch to finish on two workers")
    by_job = attempts_by_job(engine)
    assert len(by_job) == JOBS
    assert all(len(workers) == 1 for workers in by_job.values()), "a job ran twice"
    nodes = {workers[0].split("@")[0] for workers in by_job.values()}
    assert nodes == {"alpha", "beta"}  # both processes did part of it
    with engine.connect() as conn:
        assert conn.execute(text("SELECT max(attempts_made) FROM jobs")).scalar_one() == 1


def test_a_gevent_worker_runs_a_batch_concurrently_without_stalls(
    scaled: tuple[Stack, dict[str, str]], slow_provider: FakeProviderServer
) -> None:
    """`llmq worker --pool gevent`: patched before anything imports sockets or locks (no hang),
    calls overlap in one process, and intake never pauses while jobs wait. With Celery's
    prefetch at 1 x concurrency the Redis poll stopped whenever every slot was busy and resumed
    only after its 2 s timeout, so the batch ran in bursts with ~2 s of nothing between them."""
    stack, env = scaled
    engine = get_engine(env["DATABASE_URL"])
    slow_provider.reset()
    stack.start_worker("green", queues="llm.high,llm.default,llm.low", concurrency=10,
                       pool="gevent")  # fmt: skip
    wait_for_workers(env, {"green"})
    inputs = [f"Document {i}. A green thread summarizes it." for i in range(JOBS)]
    batch_id = submit_batch(engine, env, tenant(engine), ["openai:gpt-4o-mini"], inputs)
    sql = "SELECT started_at FROM jobs WHERE batch_id = :b AND status = 'succeeded'"

    def started() -> list[Any] | None:
        with engine.connect() as conn:
            rows = [r[0] for r in conn.execute(text(sql), {"b": batch_id})]
        return rows if len(rows) == JOBS else None

    starts = sorted(wait_for(started, timeout=120, what="the batch to finish on gevent"))
    assert slow_provider.stats()["max_in_flight"] >= 5  # concurrent in one process
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # Each round of 10 takes 150 ms; a stalled poll leaves ~2 s with no job started.
    assert max(gaps) < 1.2, f"intake paused for {max(gaps):.2f} s"
    assert all(len(workers) == 1 for workers in attempts_by_job(engine).values())


def test_a_worker_dedicated_to_high_priority_takes_no_default_jobs(
    scaled: tuple[Stack, dict[str, str]],
) -> None:
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import RUN_JOB
    from llmq.workers.queues import queue_depths

    stack, env = scaled
    engine = get_engine(env["DATABASE_URL"])
    stack.start_worker("vip", queues="llm.high", concurrency=2, pool="threads")
    assert wait_for_workers(env, {"vip"})["vip"] == ["llm.high"]
    owner = tenant(engine)

    def add(priority: str, i: int) -> str:
        return str(store.insert_job(
            engine, tenant_id=owner, template="summarize", template_version=1,
            priority=priority, chain=["local:extractive"],
            item=store.NewJob(input=f"A {priority} document, number {i}. It waits."),
        ))  # fmt: skip

    default_ids = [add("default", i) for i in range(5)]
    high_ids = [add("high", i) for i in range(5)]
    celery = make_celery(env["REDIS_URL"])
    for job_id in default_ids:
        celery.send_task(RUN_JOB, args=[job_id], queue="llm.default")
    for job_id in high_ids:
        celery.send_task(RUN_JOB, args=[job_id], queue="llm.high")

    def statuses() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id::text, status FROM jobs")).all()
        return dict(rows)  # type: ignore[arg-type]

    # The high jobs finish, published after the default ones; the default ones stay queued.
    wait_for(lambda: all(statuses()[j] == "succeeded" for j in high_ids), timeout=60,
             what="the llm.high jobs on the dedicated worker")  # fmt: skip
    now = statuses()
    assert all(now[j] == "queued" for j in default_ids)
    assert queue_depths(redis.Redis.from_url(env["REDIS_URL"])) == {
        "llm.high": 0, "llm.default": 5, "llm.low": 0,
    }  # fmt: skip
    assert {w[0].split("@")[0] for w in attempts_by_job(engine).values()} == {"vip"}
    assert set(attempts_by_job(engine)) == set(high_ids)

    # A general worker joining later picks the waiting default jobs up.
    stack.start_worker("general", queues="llm.high,llm.default,llm.low", concurrency=2,
                       pool="threads")  # fmt: skip
    wait_for(lambda: all(statuses()[j] == "succeeded" for j in default_ids), timeout=60,
             what="the llm.default jobs on the general worker")  # fmt: skip

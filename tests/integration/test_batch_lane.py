"""The provider Batch lane (llmq/execution/lane.py) end to end as plain Python: real Postgres and
Redis (a database of its own), the fake provider's Batch endpoints through the official SDKs,
the runner ticked in this process (a worker runs the same ticks in a thread), and the sync
pipeline for the jobs the lane hands back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from llmq import store
from llmq.execution.lane import LaneRunner
from llmq.execution.pipeline import Pipeline
from llmq.providers.base import ProviderError
from llmq.providers.batch_api import batch_client_for
from llmq.settings import Settings
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer
from llmq.workers.runtime import build_pipeline

from ..helpers import Services, make_isolated_env, wait_for

LINK = "openai:gpt-4o-mini"
# Small numbers so a test takes a second: uploads after 0.2 s, polls every 0.1-0.3 s.
LANE_ENV = {
    "LLMQ_BATCH_LANE_MAX_AGE_S": "0.2",
    "LLMQ_BATCH_LANE_POLL_S": "0.1",
    "LLMQ_BATCH_LANE_POLL_MAX_S": "0.3",
}


def _doc(i: int) -> str:
    return (
        f"Report {i}: the council met on day {i} and approved {i % 7 + 2} new bus lines. "
        "Work starts in spring. Fares stay the same. The old depot will become a park."
    )


@pytest.fixture(scope="module")
def lane_env(services: Services, stack_env: dict[str, str]) -> dict[str, str]:
    return {**make_isolated_env(services, stack_env), **LANE_ENV}


@pytest.fixture(scope="module")
def settings(lane_env: dict[str, str]) -> Settings:
    return Settings(
        database_url=lane_env["DATABASE_URL"],
        redis_url=lane_env["REDIS_URL"],
        batch_lane_max_age_s=0.2,
        batch_lane_poll_s=0.1,
        batch_lane_poll_max_s=0.3,
        cache_dedup=False,
    )


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    assert settings.database_url
    return get_engine(settings.database_url)


@pytest.fixture(scope="module")
def pipeline(settings: Settings) -> Pipeline:
    return build_pipeline(settings, name="test-sync")


@pytest.fixture()
def runner(engine: Engine, settings: Settings, pipeline: Pipeline) -> LaneRunner:
    return LaneRunner(engine, settings, pipeline, lambda p: batch_client_for(p, settings))


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    fake_provider.script_batches(reset=True, turnaround_s=0.3)
    yield fake_provider
    fake_provider.script_batches(reset=True)


@pytest.fixture()
def tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(
        engine, store.create_api_key(engine, f"lane-{uuid.uuid4().hex[:8]}")
    )
    assert principal is not None
    return principal.tenant_id


def _batch(
    engine: Engine, tenant: uuid.UUID, n: int, lane: str, link: str = LINK, **params: Any
) -> list[str]:
    batch_id = store.insert_batch(
        engine, tenant_id=tenant, template="summarize", template_version=1,
        priority="default", chain=[link], meta={}, lane=lane,
        items=[store.NewJob(input=_doc(i), custom_id=str(i), params=dict(params))
               for i in range(n)],
    )  # fmt: skip
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id::text FROM jobs WHERE batch_id = :b ORDER BY seq"), {"b": batch_id}
            ).scalars()
        )


def _jobs(engine: Engine, ids: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text, status, lane, cost_usd, error_code, provider_batch_id, "
                "(SELECT count(*) FROM attempts a WHERE a.job_id = jobs.id) AS attempts "
                "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY seq"
            ),
            {"ids": ids},
        ).mappings()
        return [dict(r) for r in rows]


def _created(fake: FakeProviderServer, provider: str = "openai") -> int:
    return int(fake.stats()["batches_created"][provider])


def _ticking(runner: LaneRunner, probe: Callable[[], bool]) -> Callable[[], bool]:
    """`probe` after one lane tick: what a worker's lane thread does between two looks."""

    def ticked() -> bool:
        runner.tick()
        return probe()

    return ticked


def _until_ended(runner: LaneRunner, engine: Engine, ids: list[str], timeout: float = 20) -> None:
    def ended() -> bool:
        return all(j["status"] not in ("queued", "running") for j in _jobs(engine, ids))

    wait_for(_ticking(runner, ended), timeout=timeout, what="lane jobs to end")


def test_two_hundred_items_cost_half_on_the_lane_in_at_most_two_upstream_batches(
    engine: Engine, runner: LaneRunner, pipeline: Pipeline, fake: FakeProviderServer,
    tenant: uuid.UUID,
) -> None:  # fmt: skip
    sync_ids = _batch(engine, tenant, 200, "sync", no_cache=True)
    for job_id in sync_ids:
        pipeline.run(job_id)
    created = _created(fake)
    lane_ids = _batch(engine, tenant, 200, "provider_batch")

    _until_ended(runner, engine, lane_ids)

    sync_jobs, lane_jobs = _jobs(engine, sync_ids), _jobs(engine, lane_ids)
    assert {j["status"] for j in sync_jobs} == {"succeeded"}
    assert {j["status"] for j in lane_jobs} == {"succeeded"}
    assert all(j["attempts"] == 1 for j in lane_jobs)
    assert _created(fake) - created <= 2
    sync_cost = sum(Decimal(j["cost_usd"]) for j in sync_jobs)
    lane_cost = sum(Decimal(j["cost_usd"]) for j in lane_jobs)
    assert sync_cost > 0
    assert abs(lane_cost / sync_cost - Decimal("0.5")) <= Decimal("0.005")
    # What the user sees: the lane, the upstream batch, and the saving in usage.
    view = store.get_job(engine, tenant, uuid.UUID(lane_ids[0]))
    assert view is not None
    assert view["lane"] == "provider_batch" and view["upstream_batch_id"]
    when = view["created_at"]
    (total,) = store.usage_rollup(
        engine, tenant, when.replace(year=2000), when.replace(year=2100), None
    )
    assert Decimal(total["saved_usd"]) == lane_cost  # the lane's half, saved
    assert Decimal(total["cost_usd"]) == sync_cost + lane_cost


@pytest.mark.parametrize("link", [LINK, "anthropic:claude-haiku-4-5"])
def test_a_worker_killed_between_upload_and_recording_it_pays_once(
    engine: Engine, runner: LaneRunner, lane_env: dict[str, str], fake: FakeProviderServer,
    tenant: uuid.UUID, link: str,
) -> None:  # fmt: skip
    # OpenAI's batch is found by its metadata, Anthropic's by its custom ids once it ended.
    provider = link.split(":")[0]
    ids = _batch(engine, tenant, 20, "provider_batch", link)
    created = _created(fake, provider)
    script = textwrap.dedent(
        """
        import os, time
        from llmq.execution.lane import LaneRunner
        from llmq.providers.batch_api import batch_client_for
        from llmq.settings import get_settings
        from llmq.store.engine import get_engine
        from llmq.workers.runtime import build_pipeline

        s = get_settings()
        time.sleep(s.batch_lane_max_age_s)  # the jobs are old enough to upload
        LaneRunner(get_engine(s.database_url), s, build_pipeline(s),
                   lambda p: batch_client_for(p, s), after_submit=lambda: os._exit(9)).tick()
        """
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **lane_env}, timeout=60,
        capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert _created(fake, provider) == created + 1  # uploaded, and the id never recorded:
    assert store.lane_stats(engine).get("intent") == 1

    _until_ended(runner, engine, ids)

    assert _created(fake, provider) == created + 1  # found upstream: no second batch
    jobs = _jobs(engine, ids)
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert all(j["attempts"] == 1 for j in jobs)  # each answer recorded and paid once
    # At the batch price: half of what the same tokens cost on the sync lane.
    with engine.connect() as conn:
        prices = conn.execute(
            text(
                "SELECT cost_usd, sync_cost_usd FROM attempts "
                "WHERE job_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids},
        ).all()
    assert prices and all(cost * 2 == sync for cost, sync in prices)
    assert "intent" not in store.lane_stats(engine)


def test_errored_items_and_a_failed_batch_fall_back_to_the_sync_lane(
    engine: Engine, runner: LaneRunner, pipeline: Pipeline, fake: FakeProviderServer,
    tenant: uuid.UUID,
) -> None:  # fmt: skip
    ids = _batch(engine, tenant, 6, "provider_batch")
    fake.script_batches(turnaround_s=0.2, errored_ids=ids[:2], expired_ids=ids[2:3])

    _until_ended(runner, engine, ids[3:])
    handed = _jobs(engine, ids[:3])
    assert {j["status"] for j in handed} == {"retrying"}
    assert {j["lane"] for j in handed} == {"sync"}
    for job_id in ids[:3]:  # what the worker does once the reconciler publishes them
        pipeline.run(job_id)
    jobs = _jobs(engine, ids)
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert [j["attempts"] for j in jobs] == [2, 2, 2, 1, 1, 1]

    # A whole batch that fails upstream: every job goes to the sync lane.
    failed = _batch(engine, tenant, 3, "provider_batch")
    fake.script_batches(turnaround_s=0.2, fail_next=1)
    wait_for(
        _ticking(runner, lambda: {j["status"] for j in _jobs(engine, failed)} == {"retrying"}),
        timeout=20, what="a failed upstream batch handed back",
    )  # fmt: skip
    for job_id in failed:
        pipeline.run(job_id)
    assert {j["status"] for j in _jobs(engine, failed)} == {"succeeded"}


def test_a_chain_without_a_batch_api_runs_on_the_sync_lane(
    engine: Engine, runner: LaneRunner, pipeline: Pipeline, tenant: uuid.UUID,
    settings: Settings,
) -> None:  # fmt: skip
    ids = _batch(engine, tenant, 2, "provider_batch", "local:extractive")
    wait_for(
        _ticking(runner, lambda: {j["lane"] for j in _jobs(engine, ids)} == {"sync"}),
        timeout=20, what="the jobs handed to the sync lane",
    )  # fmt: skip
    assert {j["status"] for j in _jobs(engine, ids)} == {"queued"}  # the reconciler publishes
    for job_id in ids:
        pipeline.run(job_id)
    assert {j["status"] for j in _jobs(engine, ids)} == {"succeeded"}

    # So does a chain whose Batch API provider this worker has no key for.
    keyless = settings.model_copy(update={"anthropic_api_key": None})
    no_key = LaneRunner(engine, keyless, pipeline, lambda p: batch_client_for(p, keyless))
    ids = _batch(engine, tenant, 2, "provider_batch", "anthropic:claude-haiku-4-5")
    wait_for(
        _ticking(no_key, lambda: {j["lane"] for j in _jobs(engine, ids)} == {"sync"}),
        timeout=20, what="the jobs handed to the sync lane",
    )  # fmt: skip


def test_cancelling_the_batch_cancels_upstream(
    engine: Engine, runner: LaneRunner, fake: FakeProviderServer, tenant: uuid.UUID
) -> None:
    ids = _batch(engine, tenant, 5, "provider_batch")
    fake.script_batches(turnaround_s=60)
    cancelled_before = int(fake.stats()["batches_cancelled"]["openai"])
    wait_for(
        _ticking(runner, lambda: all(j["provider_batch_id"] for j in _jobs(engine, ids))),
        timeout=20, what="the jobs uploaded",
    )  # fmt: skip
    with engine.connect() as conn:
        batch_id = conn.execute(
            text("SELECT batch_id FROM jobs WHERE id = :id"), {"id": ids[0]}
        ).scalar_one()
    # Upstream, items finish evenly over the turnaround: at 30 s of 60, two of five are done.
    fake.advance_batches(30)
    assert store.cancel_jobs(engine, tenant, batch_id=batch_id) is not None

    _until_ended(runner, engine, ids)

    jobs = _jobs(engine, ids)
    # Which two finished first is the upload's order, not the batch's.
    done = [j for j in jobs if j["status"] == "succeeded"]
    assert sorted(j["status"] for j in jobs) == ["cancelled"] * 3 + ["succeeded"] * 2
    assert all(Decimal(j["cost_usd"]) > 0 for j in done)  # kept, and paid
    assert all(Decimal(j["cost_usd"] or 0) == 0 for j in jobs if j not in done)
    assert int(fake.stats()["batches_cancelled"]["openai"]) == cancelled_before + 1


def test_a_lane_job_is_shadowed_like_a_sync_job(
    engine: Engine, runner: LaneRunner, fake: FakeProviderServer, tenant: uuid.UUID
) -> None:
    """A batch's shadow spec applies on the lane too: each answered job gets its shadow job and
    its evaluation row in the transaction that ends it."""
    batch_id = store.insert_batch(
        engine, tenant_id=tenant, template="summarize", template_version=1,
        priority="default", chain=[LINK], meta={}, lane="provider_batch",
        shadow={"chain": ["anthropic:claude-haiku-4-5"], "percent": 100},
        items=[store.NewJob(input=_doc(i), custom_id=str(i)) for i in range(3)],
    )  # fmt: skip
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                text("SELECT id::text FROM jobs WHERE batch_id = :b ORDER BY seq"), {"b": batch_id}
            ).scalars()
        )

    _until_ended(runner, engine, ids)

    assert {j["status"] for j in _jobs(engine, ids)} == {"succeeded"}
    with engine.connect() as conn:
        shadows = conn.execute(
            text(
                "SELECT shadow_of::text, lane, priority FROM jobs "
                "WHERE kind = 'shadow' AND shadow_of = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids},
        ).all()
        evaluated = conn.execute(
            text(
                "SELECT job_id::text FROM eval_log "
                "WHERE role = 'primary' AND job_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids},
        ).scalars()
        assert sorted(evaluated) == sorted(ids)
    assert sorted(row[0] for row in shadows) == sorted(ids)
    # The shadow runs synchronously on the low queue, whatever its primary's lane.
    assert {(row[1], row[2]) for row in shadows} == {("sync", "low")}


def test_a_provider_that_does_not_answer_a_poll_is_asked_again_later_not_every_tick(
    engine: Engine, runner: LaneRunner, fake: FakeProviderServer, tenant: uuid.UUID,
    settings: Settings,
) -> None:  # fmt: skip
    fake.script_batches(turnaround_s=60)
    ids = _batch(engine, tenant, 2, "provider_batch")
    wait_for(
        _ticking(runner, lambda: all(j["provider_batch_id"] for j in _jobs(engine, ids))),
        timeout=20, what="the jobs uploaded",
    )  # fmt: skip
    upload = _jobs(engine, ids)[0]["provider_batch_id"]

    def poll_state() -> tuple[int, Any, Any]:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT polls, upstream_status, next_poll_at - polled_at FROM provider_batches "
                    "WHERE id = :id"
                ),
                {"id": upload},
            ).one()
        return int(row[0]), row[1], row[2]

    wait_for(_ticking(runner, lambda: poll_state()[0] >= 1), timeout=20, what="a first poll")
    polls, status, _ = poll_state()
    real = runner.client_for

    class Unreachable:
        """The real client, except that the provider does not answer a poll."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real("openai"), name)

        def retrieve(self, upstream_id: str) -> Any:
            raise ProviderError("timeout", "request timed out", retryable=True)

    with engine.begin() as conn:  # due now
        conn.execute(
            text("UPDATE provider_batches SET next_poll_at = now() WHERE id = :id"), {"id": upload}
        )
    runner.client_for = lambda provider: Unreachable()  # type: ignore[assignment,return-value]
    runner.tick()
    after, kept_status, backoff = poll_state()
    assert after == polls + 1 and kept_status == status  # counted; the last answer kept
    assert backoff.total_seconds() >= settings.batch_lane_poll_s  # not again on the next tick

    runner.client_for = real
    fake.advance_batches(60)
    _until_ended(runner, engine, ids)
    assert {j["status"] for j in _jobs(engine, ids)} == {"succeeded"}


def test_budgets_are_reserved_at_the_batch_price_before_anything_is_uploaded(
    engine: Engine, runner: LaneRunner, fake: FakeProviderServer, settings: Settings,
    pipeline: Pipeline,
) -> None:  # fmt: skip
    import redis

    name = f"lane-budget-{uuid.uuid4().hex[:8]}"
    principal = store.authenticate(engine, store.create_api_key(engine, name))
    assert principal is not None
    # Room for one job's estimate at the batch price (about $0.00016 here), not two.
    store.set_budget(engine, name, Decimal("0.0002"), None)
    ids = _batch(engine, principal.tenant_id, 4, "provider_batch")
    created = _created(fake)

    _until_ended(runner, engine, ids)

    jobs = _jobs(engine, ids)
    assert {j["status"] for j in jobs} == {"failed"}
    assert {j["error_code"] for j in jobs} == {"budget_exceeded"}
    assert _created(fake) == created  # nothing went upstream
    # The one reservation made was released, not left to block the tenant's budget.
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    assert not [k for k in client.scan_iter(f"llmq:budget:{principal.tenant_id}:*:reserved")]

    # Retrying the batch once the budget allows it: the jobs go through the lane again.
    store.set_budget(engine, name, None, None)
    with engine.connect() as conn:
        batch_id = conn.execute(
            text("SELECT batch_id FROM jobs WHERE id = :id"), {"id": ids[0]}
        ).scalar_one()
    assert store.retry_batch_items(engine, principal.tenant_id, batch_id) == (4, "default")
    # A worker started now (the guard caches a tenant's limits for LLMQ_BUDGET_CACHE_S).
    later = LaneRunner(engine, settings, pipeline, lambda p: batch_client_for(p, settings))
    _until_ended(later, engine, ids)
    assert {j["status"] for j in _jobs(engine, ids)} == {"succeeded"}
    assert _created(fake) == created + 1


def test_llmq_compat_lane_runs_openai_sdk_batches_through_the_lane(
    engine: Engine, runner: LaneRunner, settings: Settings, fake: FakeProviderServer
) -> None:
    import json

    import openai

    from llmq.api.app import create_app

    from ..live_api import serve

    key = store.create_api_key(engine, f"lane-compat-{uuid.uuid4().hex[:8]}")
    created = _created(fake)
    app = create_app(settings.model_copy(update={"compat_lane": "provider_batch"}))
    with serve(app) as root:
        client = openai.OpenAI(base_url=f"{root}/openai/v1", api_key=key, max_retries=0)
        lines = [
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "max_tokens": 64,
                      "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": _doc(i)}]}}
            for i in range(3)
        ]  # fmt: skip
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        def completed() -> Any:
            runner.tick()
            found = client.batches.retrieve(batch.id)
            return found if found.status == "completed" else None

        done = wait_for(completed, timeout=30, what="the compatible batch to complete")
        assert done.output_file_id
        output = [
            json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()
        ]
    assert sorted(o["custom_id"] for o in output) == ["c0", "c1", "c2"]
    assert {o["response"]["status_code"] for o in output} == {200}
    assert _created(fake) == created + 1  # one upstream batch carried them


def test_a_worker_runs_the_lane_and_the_sync_fallback_on_its_own(
    engine: Engine, lane_env: dict[str, str], fake: FakeProviderServer, tenant: uuid.UUID,
    tmp_path: Any,
) -> None:  # fmt: skip
    from llmq.localstack.processes import Stack

    ids = _batch(engine, tenant, 10, "provider_batch")
    fake.script_batches(turnaround_s=0.3, errored_ids=ids[:2])
    stack = Stack(env={**lane_env, "LLMQ_BATCH_LANE_INTERVAL_S": "0.2"}, log_dir=tmp_path)
    try:
        stack.start_worker("lane", queues="llm.high,llm.default,llm.low", concurrency=4,
                           pool="threads")  # fmt: skip
        # The lane thread uploads and collects; the reconciler publishes the two errored jobs
        # to the sync lane, where the worker's pipeline answers them.
        wait_for(
            lambda: {j["status"] for j in _jobs(engine, ids)} == {"succeeded"},
            timeout=60, what="every lane job answered by the worker",
        )  # fmt: skip
    finally:
        stack.stop()
    jobs = _jobs(engine, ids)
    assert [j["attempts"] for j in jobs] == [2, 2] + [1] * 8
    assert [j["lane"] for j in jobs] == ["sync", "sync"] + ["provider_batch"] * 8

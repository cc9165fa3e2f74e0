"""Operators' commands as run from a shell: `llmq queues`, `llmq jobs retry|cancel`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Engine, text

from llmq import store
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import submit_batch, wait_for
from .test_cli import _llmq

DOC = "The museum reopened after a year of repairs. Visitors queued around the block."


def _jobs(engine: Engine, batch_id: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT id::text, status, error_code, attempts_made, cost_usd FROM jobs "
                    "WHERE batch_id = :b ORDER BY seq"
                ),
                {"b": batch_id},
            ).mappings()
        ]


def _tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(
        engine, store.create_api_key(engine, f"ops-{uuid.uuid4().hex[:8]}")
    )
    assert principal is not None
    return principal.tenant_id


def test_queues_shows_depths_and_live_workers(isolated_env: dict[str, str]) -> None:
    from llmq.workers.celery_app import make_celery

    broker = make_celery(isolated_env["REDIS_URL"])
    for _ in range(3):
        broker.send_task("llmq.run_job", args=[str(uuid.uuid4())], queue="llm.low")
    shown = _llmq("queues", "--json", env=isolated_env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "queues": {"llm.high": 0, "llm.default": 0, "llm.low": 3},
        "workers": [],
        "rate_limits": [],
    }
    table = _llmq("queues", env=isolated_env).stdout.splitlines()
    assert table[2].split() == ["llm.low", "3"] and "0 live" in table[3]


def test_cancel_a_job_or_a_whole_batch(isolated_env: dict[str, str]) -> None:
    engine = get_engine(isolated_env["DATABASE_URL"])
    tenant = _tenant(engine)
    batch_id = submit_batch(engine, isolated_env, tenant, ["local:extractive"],
                            [f"{DOC} {i}" for i in range(3)])  # fmt: skip
    first = _jobs(engine, batch_id)[0]["id"]
    one = _llmq("jobs", "cancel", first, env=isolated_env)  # no worker: all still queued
    assert one.returncode == 0, one.stderr
    assert "cancelled 1" in one.stdout
    assert [j["status"] for j in _jobs(engine, batch_id)] == ["cancelled", "queued", "queued"]
    rest = _llmq("jobs", "cancel", str(batch_id), env=isolated_env)
    assert "cancelled 2" in rest.stdout
    assert {j["status"] for j in _jobs(engine, batch_id)} == {"cancelled"}

    unknown = _llmq("jobs", "cancel", str(uuid.uuid4()), env=isolated_env)
    assert unknown.returncode == 1 and "no job or batch" in unknown.stderr
    garbage = _llmq("jobs", "cancel", "not-an-id", env=isolated_env)
    assert garbage.returncode == 1 and "not a job or batch id" in garbage.stderr


def test_retry_runs_a_failed_job_again_from_a_fresh_start(
    stack_env: dict[str, str], engine: Engine, worker: Any, fake_provider: FakeProviderServer
) -> None:
    model = f"ops-down-{uuid.uuid4().hex[:8]}"
    fake_provider.set_script(FakeScript(rules=[FaultRule(model=model, fault="status", status=500)]))
    try:
        batch_id = submit_batch(engine, stack_env, _tenant(engine), [f"openai:{model}"], [DOC])
        failed = wait_for(
            lambda: next((j for j in _jobs(engine, batch_id) if j["status"] == "failed"), None),
            60,
            "the job to fail",
        )
    finally:
        fake_provider.set_script(FakeScript())
    assert failed["error_code"] == "all_providers_failed" and failed["attempts_made"] == 3

    retried = _llmq("jobs", "retry", failed["id"], env=stack_env)
    assert retried.returncode == 0, retried.stderr
    assert "queued again" in retried.stdout
    done = wait_for(
        lambda: next((j for j in _jobs(engine, batch_id) if j["status"] == "succeeded"), None),
        60,
        "the retried job to succeed",
    )
    # The provider is healthy now: one more call, after the three that failed before.
    assert done["attempts_made"] == 4 and done["error_code"] is None

    again = _llmq("jobs", "retry", failed["id"], env=stack_env)
    assert again.returncode == 1 and "no failed, expired, blocked or cancelled job" in again.stderr


def _key_id(engine: Engine, key: str) -> str:
    row = store.get_api_key_by_hash(engine, store.hash_key(key))
    assert row is not None
    return str(row["id"])


def test_keys_revoke_takes_any_unambiguous_prefix(isolated_env: dict[str, str]) -> None:
    engine = get_engine(isolated_env["DATABASE_URL"])
    admin = store.create_api_key(engine, "ops", admin=True)
    first, second, third = (store.create_api_key(engine, "t") for _ in range(3))

    by_key = _llmq("keys", "revoke", first[:12], env=isolated_env)  # longer than `keys list`'s 11
    assert by_key.returncode == 0, by_key.stderr
    assert by_key.stdout.strip() == f"revoked key {_key_id(engine, first)}"
    by_id = _llmq("keys", "revoke", _key_id(engine, second)[:8], env=isolated_env)
    assert by_id.returncode == 0, by_id.stderr

    short = _llmq("keys", "revoke", "llmq_ab", env=isolated_env)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    with engine.begin() as conn:  # two keys whose visible prefixes collide
        conn.execute(text("UPDATE api_keys SET prefix = 'llmq_same00' WHERE revoked_at IS NULL"))
    ambiguous = _llmq("keys", "revoke", "llmq_same00", env=isolated_env)
    assert ambiguous.returncode == 1
    assert "'llmq_same00' matches 2 active keys" in ambiguous.stderr
    whole = _llmq("keys", "revoke", third, env=isolated_env)  # the whole key: its hash decides
    assert whole.returncode == 0, whole.stderr

    last = _llmq("keys", "revoke", _key_id(engine, admin), env=isolated_env)
    assert last.returncode == 1
    assert len(last.stderr.strip().splitlines()) == 1
    assert "is the last active admin key" in last.stderr
    assert store.authenticate(engine, admin) is not None

"""What happens to a batch after submission: results filtered by status, failed items retried
(only those), and completion windows that end unfinished jobs `expired` without a call."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from llmq import store
from llmq.localstack.processes import Stack
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import auth, wait_for
from .test_pipeline import _pipeline


def _completed(http: Any, key: str, batch_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        return body if body["status"] == "completed" else None

    return wait_for(done, 60, f"batch {batch_id} to complete")


def _results(http: Any, key: str, batch_id: str, query: str = "") -> list[dict[str, Any]]:
    response = http.get(f"/v1/batches/{batch_id}/results{query}", headers=auth(key))
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def _calls(fake: FakeProviderServer, model: str) -> int:
    return int(fake.stats()["by_model"].get(model, 0))


def test_results_filter_and_retry_rerun_only_failed_items(
    http: Any, new_key: Any, worker: Any, fake_provider: FakeProviderServer
) -> None:
    # The first two calls to this model are rejected (400, not retryable): two items fail.
    rejected = FaultRule(api="openai", model="retry-me", fault="status", status=400, first_n=2)
    fake_provider.set_script(FakeScript(rules=[rejected]))
    calls_before = _calls(fake_provider, "retry-me")
    key = new_key()
    items = [{"custom_id": f"r{i}", "input": f"Item {i}. The mill closed. People left."}
             for i in range(4)]  # fmt: skip
    submitted = http.post(
        "/v1/batches", json={"items": items, "chain": ["openai:retry-me"]}, headers=auth(key)
    )
    batch_id = submitted.json()["id"]
    batch = _completed(http, key, batch_id)
    assert (batch["counts"]["failed"], batch["counts"]["succeeded"]) == (2, 2)

    failed = _results(http, key, batch_id, "?status=failed")
    assert len(failed) == 2 and {r["status"] for r in failed} == {"failed"}
    assert len(_results(http, key, batch_id, "?status=failed,succeeded")) == 4
    assert _results(http, key, batch_id, "?status=expired") == []
    bad = http.get(f"/v1/batches/{batch_id}/results?status=done", headers=auth(key))
    assert bad.status_code == 422 and "unknown status done" in bad.json()["error"]["message"]

    stranger = http.post(f"/v1/batches/{batch_id}/retry", headers=auth(new_key()))
    assert stranger.status_code == 404
    retried = http.post(f"/v1/batches/{batch_id}/retry", headers=auth(key))
    assert retried.status_code == 202 and retried.json() == {"id": batch_id, "retried": 2}
    batch = _completed(http, key, batch_id)
    assert batch["counts"]["succeeded"] == 4 and batch["counts"]["failed"] == 0
    # Exactly one new call per failed item; the succeeded ones were not run again.
    assert _calls(fake_provider, "retry-me") - calls_before == 6
    rerun = {r["job_id"] for r in failed}
    for row in _results(http, key, batch_id):
        job = http.get(f"/v1/jobs/{row['job_id']}", headers=auth(key)).json()
        outcomes = [a["outcome"] for a in job["attempts"]]
        assert outcomes == (["bad_request", "ok"] if row["job_id"] in rerun else ["ok"]), outcomes
    again = http.post(f"/v1/batches/{batch_id}/retry", headers=auth(key))
    assert again.json()["retried"] == 0


def _tenant(engine: Engine) -> uuid.UUID:
    principal = store.authenticate(engine, store.create_api_key(engine, "expiry"))
    assert principal is not None
    return principal.tenant_id


def _window_closed(engine: Engine, batch_id: uuid.UUID) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT now() >= expires_at FROM batches WHERE id = :b"), {"b": batch_id}
            ).scalar_one()
        )


def test_window_closes_before_a_worker_runs_the_jobs_they_expire_uncalled(
    isolated_env: dict[str, str], fake_provider: FakeProviderServer, tmp_path: Path
) -> None:
    engine = get_engine(isolated_env["DATABASE_URL"])
    batch_id = store.insert_batch(
        engine, tenant_id=_tenant(engine), template="summarize", template_version=1,
        priority="default", chain=["openai:expiry-check"], meta={}, completion_window_s=1,
        items=[store.NewJob(input=f"Text {i}. It rained.") for i in range(3)],
    )  # fmt: skip
    wait_for(lambda: _window_closed(engine, batch_id), 10, "the completion window to close")
    calls_before = _calls(fake_provider, "expiry-check")
    stack = Stack(env=isolated_env, log_dir=tmp_path / "logs")
    stack.start_worker("expiry", queues="llm.high,llm.default,llm.low", concurrency=4,
                       pool="threads")  # fmt: skip
    try:

        def finished() -> dict[str, Any] | None:
            batch = store.get_batch(engine, _owner(engine, batch_id), batch_id)
            return batch if batch and batch["status"] == "completed" else None

        batch = wait_for(finished, 60, "the reconciler to expire the batch's jobs")
    finally:
        stack.stop()
    assert batch["counts"]["expired"] == 3 and batch["completed"] == 3
    with engine.connect() as conn:
        codes = conn.execute(
            text("SELECT DISTINCT error_code FROM jobs WHERE batch_id = :b"), {"b": batch_id}
        ).scalars().all()  # fmt: skip
    assert codes == ["expired"]
    assert _calls(fake_provider, "expiry-check") == calls_before


def _owner(engine: Engine, batch_id: uuid.UUID) -> uuid.UUID:
    owner = store.get_batch_owner(engine, batch_id)
    assert owner is not None
    return owner


def test_running_job_makes_no_provider_call_after_the_window_closes(
    engine: Engine, fake_provider: FakeProviderServer
) -> None:
    """Attempt 1 fails (retryable); while it backs off the window closes; no attempt 2."""
    fake_provider.set_script(FakeScript(rules=[
        FaultRule(api="openai", model="mid-expiry", fault="status", status=500)]))  # fmt: skip
    batch_id = store.insert_batch(
        engine, tenant_id=_tenant(engine), template="summarize", template_version=1,
        priority="default", chain=["openai:mid-expiry"], meta={}, completion_window_s=1,
        items=[store.NewJob(input="The ferry was late. Passengers waited.")],
    )  # fmt: skip
    with engine.connect() as conn:
        job_id = str(conn.execute(text("SELECT id FROM jobs WHERE batch_id = :b"),
                                  {"b": batch_id}).scalar_one())  # fmt: skip

    def backoff(_: float) -> None:  # the retry wait outlasts the window
        wait_for(lambda: _window_closed(engine, batch_id), 10, "the window to close")

    pipeline = _pipeline(engine, fake_provider)
    pipeline._sleep = backoff
    calls_before = _calls(fake_provider, "mid-expiry")
    assert pipeline.run(job_id) == "expired"
    assert _calls(fake_provider, "mid-expiry") - calls_before == 1
    job = store.get_job(engine, _owner(engine, batch_id), uuid.UUID(job_id))
    assert job is not None
    assert job["status"] == "expired" and job["attempts_made"] == 1
    fake_provider.set_script(FakeScript())

"""Cancelling a batch or a job: waiting work stops at once, running work at its next step,
what was already spent stays on the books, and a worker that died meanwhile changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from llmq import store
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import auth, wait_for

DOC = "The council approved the budget. Parks get more money. Roads get less. A vote follows."


@pytest.fixture()
def slow_provider(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    yield fake_provider
    fake_provider.set_script(FakeScript())


def _job(http: Any, key: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
    return body


def _totals_match_attempts(engine: Engine, where: str, params: dict[str, Any]) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.input_tokens, j.output_tokens, j.cost_usd, "
                "(SELECT coalesce(sum(input_tokens), 0) FROM attempts a WHERE a.job_id = j.id), "
                "(SELECT coalesce(sum(output_tokens), 0) FROM attempts a WHERE a.job_id = j.id), "
                "(SELECT coalesce(sum(cost_usd), 0) FROM attempts a WHERE a.job_id = j.id) "
                f"FROM jobs j WHERE {where}"
            ),
            params,
        ).all()
    assert rows
    for r in rows:
        assert (r[0], r[1], r[2] or 0) == (r[3], r[4], r[5])


def test_cancelling_a_batch_stops_waiting_jobs_at_once_and_running_ones_after_their_call(
    http: Any, new_key: Any, worker: Any, slow_provider: FakeProviderServer, engine: Engine
) -> None:
    slow_provider.set_script(FakeScript(latency_ms=400))
    key = new_key()
    items = [{"custom_id": str(i), "input": f"{DOC} Item {i}."} for i in range(200)]
    batch_id = http.post(
        "/v1/batches", json={"items": items, "chain": ["openai:gpt-4o-mini"]}, headers=auth(key)
    ).json()["id"]

    def some_done() -> bool:
        counts = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()["counts"]
        return counts["succeeded"] >= 20

    wait_for(some_done, 60, "the first 20 jobs to finish")
    calls_at_cancel = slow_provider.stats()["requests"]
    response = http.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))
    assert response.status_code == 200
    assert response.json()["status"] in ("cancelling", "cancelled")
    assert response.json()["cancelled_at"] is not None

    def cancelled() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        return body if body["status"] == "cancelled" else None

    batch = wait_for(cancelled, 60, "the batch to be cancelled")
    counts = batch["counts"]
    assert counts["succeeded"] + counts["cancelled"] == 200
    assert counts["cancelled"] >= 100  # most of the batch never ran
    # Only calls already claimed when the cancel landed may still reach the provider: at most
    # one per worker thread (the shared worker has 20).
    assert slow_provider.stats()["requests"] - calls_at_cancel <= 20
    _totals_match_attempts(engine, "j.batch_id = :b", {"b": batch_id})
    with engine.connect() as conn:
        attempts_of_cancelled = conn.execute(
            text(
                "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
                "WHERE j.batch_id = :b AND j.status = 'cancelled' AND a.outcome = 'ok'"
            ),
            {"b": batch_id},
        ).scalar_one()
    assert attempts_of_cancelled == 0  # a call that returned a result keeps its result

    again = http.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))
    assert again.status_code == 200 and again.json()["counts"] == counts  # idempotent


def test_a_running_job_stops_at_its_next_step_instead_of_retrying(
    http: Any, new_key: Any, worker: Any, slow_provider: FakeProviderServer, engine: Engine
) -> None:
    # Every call fails after 1 s: without the cancel the job would make 3 attempts and fail.
    model = f"doomed-{uuid.uuid4().hex[:6]}"
    slow_provider.set_script(
        FakeScript(latency_ms=1000, rules=[FaultRule(model=model, fault="status", status=500)])
    )
    key = new_key()
    job_id = http.post(
        "/v1/jobs", json={"input": DOC, "chain": [f"openai:{model}"]}, headers=auth(key)
    ).json()["id"]
    wait_for(lambda: slow_provider.stats()["by_model"].get(model, 0) >= 1, 30, "the first call")
    calls_at_cancel = slow_provider.stats()["by_model"][model]
    response = http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert response.status_code == 200
    assert response.json()["status"] in ("running", "cancelled")

    job = wait_for(
        lambda: (j := _job(http, key, job_id))["status"] != "running" and j, 30, "the job to end"
    )
    assert job["status"] == "cancelled" and job["error_code"] == "cancelled"
    assert slow_provider.stats()["by_model"][model] <= calls_at_cancel + 1
    assert 1 <= len(job["attempts"]) <= calls_at_cancel + 1
    _totals_match_attempts(engine, "j.id = :j", {"j": job_id})


def test_cancel_is_tenant_scoped_idempotent_and_refused_for_finished_work(
    http: Any, new_key: Any, worker: Any, slow_provider: FakeProviderServer
) -> None:
    slow_provider.set_script(FakeScript())
    owner, other = new_key(), new_key()
    job_id = http.post(
        "/v1/jobs", json={"input": DOC, "chain": ["openai:gpt-4o-mini"]}, headers=auth(owner)
    ).json()["id"]
    wait_for(lambda: _job(http, owner, job_id)["status"] == "succeeded", 60, "the job")

    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(other)).status_code == 404
    refused = http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(owner))
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "not_cancellable"
    assert _job(http, owner, job_id)["status"] == "succeeded"
    assert http.post(f"/v1/jobs/{uuid.uuid4()}/cancel", headers=auth(owner)).status_code == 404
    assert http.post("/v1/batches/not-a-uuid/cancel", headers=auth(owner)).status_code == 404


def test_a_cancelled_job_whose_worker_died_ends_cancelled_with_its_spend(
    isolated_env: dict[str, str],
) -> None:
    # Its own database: no running reconciler may expire the lease before this test does.
    engine = get_engine(isolated_env["DATABASE_URL"])
    principal = store.authenticate(engine, store.create_api_key(engine, "t"))
    assert principal is not None
    tenant_id = principal.tenant_id
    job_id = store.insert_job(
        engine, tenant_id=tenant_id, template="summarize", template_version=1,
        priority="default", chain=["local:extractive"], item=store.NewJob(input=DOC),
    )  # fmt: skip
    claimed = store.claim_job(engine, str(job_id), "worker-a", lease_s=30)
    assert claimed is not None and not claimed.cancel_requested
    spent = store.AttemptRecord(
        provider="openai", model="gpt-4o-mini", outcome="server_error", latency_ms=5.0,
        input_tokens=40, output_tokens=3, cost_usd=None,
    )  # fmt: skip
    assert store.record_attempt(engine, job_id, "worker-a", 30, spent) is not None
    result = store.cancel_jobs(engine, tenant_id, job_id=job_id)
    assert result == store.Cancellation(cancelled=0, stopping=1)
    recorded = store.record_attempt(engine, job_id, "worker-a", 30, spent)
    assert recorded is not None and recorded.cancel_requested  # the worker learns it here

    with engine.begin() as conn:  # worker-a dies: its lease runs out
        conn.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job_id},
        )
        expired = store.expire_leases(conn, max_deliveries=3)
    assert (str(job_id), "cancelled", "default") in expired
    job = store.get_job(engine, tenant_id, job_id)
    assert job is not None
    assert (job["status"], job["error_code"]) == ("cancelled", "cancelled")
    assert (job["input_tokens"], job["output_tokens"]) == (80, 6)
    assert job["cost_usd"] is None  # an unpriced attempt makes the total unknown, not zero

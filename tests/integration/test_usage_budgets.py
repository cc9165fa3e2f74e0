"""Usage rollups and budgets through the HTTP API and real Celery workers.

* Reconciliation: every rollup of GET /v1/usage (by model, day, batch, key) adds up, exactly,
  to the sum over attempts, which equals the jobs' and batches' own totals.
* 402 at submission when the estimate does not fit in what is left of a tenant budget.
* A batch with a spending cap stops mid-run: the fake provider sees no call beyond the cap.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from llmq import store
from llmq.localstack.processes import Stack
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import Services, auth, wait_for

TERMINAL = {"succeeded", "failed", "blocked", "cancelled"}


def _doc(i: int, words: int = 30) -> str:
    return f"Item {i}. " + " ".join(f"word{i}x{j}" for j in range(words)) + "."


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Iterator[FakeProviderServer]:
    yield fake_provider
    fake_provider.set_script(FakeScript())


def _wait_jobs_done(http: Any, key: str, job_ids: list[str]) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        jobs = [http.get(f"/v1/jobs/{j}", headers=auth(key)).json() for j in job_ids]
        return jobs if all(j["status"] in TERMINAL for j in jobs) else None

    return wait_for(probe, timeout=120, what="jobs to finish")


def _batch_job_ids(http: Any, key: str, batch_id: str) -> list[str]:
    response = http.get(f"/v1/batches/{batch_id}/results", headers=auth(key))
    return [json.loads(line)["job_id"] for line in response.text.splitlines() if line]


def test_usage_rollups_reconcile_exactly_with_attempts_jobs_and_batches(
    http: Any, engine: Engine, worker: Any, fake: FakeProviderServer
) -> None:
    tenant = f"recon-{uuid.uuid4().hex[:8]}"
    key_a = store.create_api_key(engine, tenant)
    key_b = store.create_api_key(engine, tenant)  # a second key of the same tenant
    # Some failed attempts (no tokens), some refusals (tokens, billed), prompt-cache reads.
    fake.set_script(
        FakeScript(
            cached_fraction=0.25,
            rules=[
                FaultRule(api="openai", fault="status", status=500, first_n=3),
                FaultRule(api="anthropic", fault="refusal", first_n=2),
            ],
        )
    )
    chain = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    batches: dict[str, str] = {}
    for name, key, n in (("a", key_a, 5), ("b", key_b, 3)):
        response = http.post(
            "/v1/batches",
            json={
                "items": [{"input": _doc(i)} for i in range(n)],
                "chain": chain if name == "a" else chain[::-1],
                "params": {"no_cache": True, "max_tokens": 60},
            },
            headers=auth(key),
        )
        assert response.status_code == 202, response.text
        batches[name] = response.json()["id"]
    single = http.post(
        "/v1/jobs",
        json={"input": _doc(99), "chain": chain, "params": {"no_cache": True}},
        headers=auth(key_b),
    )
    assert single.status_code == 202, single.text
    single_id = single.json()["id"]

    job_ids = {name: _batch_job_ids(http, key_a, b) for name, b in batches.items()}
    all_ids = [*job_ids["a"], *job_ids["b"], single_id]
    jobs = _wait_jobs_done(http, key_a, all_ids)

    # The attempts, as each job reports them (GET /v1/jobs/{id}).
    attempts = [(job, a) for job in jobs for a in job["attempts"]]
    assert any(a["outcome"] != "ok" for _, a in attempts), "the script should cause failures"
    assert any(a["cached_tokens"] > 0 for _, a in attempts)
    attempt_sum = sum(Decimal(a["cost_usd"]) for _, a in attempts)
    assert attempt_sum > 0
    # ... equal each job's own total, and the batch totals.
    for job in jobs:
        assert Decimal(job["cost_usd"]) == sum(
            (Decimal(a["cost_usd"]) for a in job["attempts"]), Decimal(0)
        )
    batch_cost = {
        name: Decimal(http.get(f"/v1/batches/{b}", headers=auth(key_a)).json()["cost_usd"])
        for name, b in batches.items()
    }
    single_cost = Decimal(next(j for j in jobs if j["id"] == single_id)["cost_usd"])
    assert batch_cost["a"] + batch_cost["b"] + single_cost == attempt_sum
    with engine.connect() as conn:
        tenant_id = conn.execute(
            text("SELECT id FROM tenants WHERE name = :n"), {"n": tenant}
        ).scalar_one()
        sql_sum = conn.execute(
            text("SELECT sum(cost_usd) FROM attempts WHERE tenant_id = :t"), {"t": tenant_id}
        ).scalar_one()
    assert sql_sum == attempt_sum

    expected: dict[str, dict[str | None, Decimal]] = {
        g: defaultdict(Decimal) for g in ("model", "day", "batch", "key")
    }
    batch_of = {j: b for name, b in batches.items() for j in job_ids[name]}
    key_of = {j: "a" if j in job_ids["a"] else "b" for j in all_ids}
    for job, a in attempts:
        cost = Decimal(a["cost_usd"])
        expected["model"][f"{a['provider']}:{a['model']}"] += cost
        expected["day"][a["created_at"][:10]] += cost
        expected["batch"][batch_of.get(job["id"])] += cost
        expected["key"][key_of[job["id"]]] += cost

    prefixes = {"a": key_a[:11], "b": key_b[:11]}
    for group_by in ("model", "day", "batch", "key"):
        response = http.get("/v1/usage", params={"group_by": group_by}, headers=auth(key_b))
        assert response.status_code == 200, response.text
        report = response.json()
        rows = report["rows"]
        total = report["total"]
        # Rows add up to the total, and the total to the attempts: exactly (and so to the cent).
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(total["cost_usd"])
        assert Decimal(total["cost_usd"]) == attempt_sum
        assert total["attempts"] == len(attempts) == sum(r["attempts"] for r in rows)
        assert total["jobs"] == len(all_ids)
        assert total["input_tokens"] == sum(a["input_tokens"] for _, a in attempts)
        assert total["cached_tokens"] == sum(a["cached_tokens"] for _, a in attempts)
        if group_by == "key":
            got = {r["label"]: Decimal(r["cost_usd"]) for r in rows}
            assert got == {prefixes[k]: v for k, v in expected["key"].items()}
        else:
            got = {r["group"]: Decimal(r["cost_usd"]) for r in rows}
            assert got == dict(expected[group_by])
        if group_by == "batch":
            assert got[batches["a"]] == batch_cost["a"]
            assert got[batches["b"]] == batch_cost["b"]
            assert got[None] == single_cost

    # Tenant-scoped: another tenant sees none of it; a window before the work sees nothing.
    other = store.create_api_key(engine, f"other-{uuid.uuid4().hex[:8]}")
    theirs = http.get("/v1/usage", headers=auth(other)).json()
    assert theirs["rows"] == [] and Decimal(theirs["total"]["cost_usd"]) == 0
    past = http.get(
        "/v1/usage", params={"from": "2020-01-01", "to": "2020-02-01"}, headers=auth(key_a)
    ).json()
    assert past["rows"] == [] and past["total"]["attempts"] == 0


@pytest.mark.parametrize(
    "params",
    [{"group_by": "tenant"}, {"from": "yesterday"}, {"from": "2026-02-01", "to": "2026-01-01"}],
)
def test_usage_rejects_bad_queries_with_422(
    http: Any, new_key: Callable[[], str], params: dict[str, str]
) -> None:
    response = http.get("/v1/usage", params=params, headers=auth(new_key()))
    assert response.status_code == 422
    assert set(response.json()["error"]) >= {"code", "message"}


def test_usage_needs_a_key(http: Any) -> None:
    assert http.get("/v1/usage").status_code == 401


def _job_count(engine: Engine, tenant_id: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM jobs WHERE tenant_id = :t"), {"t": tenant_id}
            ).scalar_one()
        )


def test_submission_over_the_budget_left_is_refused_with_402(
    http: Any, engine: Engine, worker: Any
) -> None:
    tenant = f"budget-{uuid.uuid4().hex[:8]}"
    key = store.create_api_key(engine, tenant)
    principal = store.authenticate(engine, key)
    assert principal is not None
    small = {"input": _doc(1, 20), "chain": ["openai:gpt-4o-mini"], "params": {"max_tokens": 50}}

    # Spend something first (no budget yet: nothing is checked).
    accepted = http.post("/v1/jobs", json=small, headers=auth(key))
    assert accepted.status_code == 202
    _wait_jobs_done(http, key, [accepted.json()["id"]])
    spent = Decimal(http.get("/v1/budget", headers=auth(key)).json()["spent_today_usd"])
    assert spent > 0

    # Nothing left today: refused, with the figures, in the usual error shape; nothing written.
    store.set_budget(engine, tenant, spent, Decimal(100))
    jobs_before = _job_count(engine, principal.tenant_id)
    refused = http.post("/v1/jobs", json=small, headers=auth(key))
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "daily budget" in error["message"]
    (detail,) = error["details"]
    assert detail["scope"] == "daily" and Decimal(detail["remaining_usd"]) == 0
    assert detail["link"] == "openai:gpt-4o-mini"
    estimate = Decimal(detail["estimate_usd"])
    assert estimate > 0

    # Half the estimate left: still refused, although the estimate is far below the limit.
    store.set_budget(engine, tenant, spent + estimate / 2, None)
    refused = http.post("/v1/jobs", json=small, headers=auth(key))
    assert refused.status_code == 402
    assert Decimal(refused.json()["error"]["details"][0]["estimate_usd"]) == estimate
    # A batch is estimated as a whole: two items of this size do not fit in 1.5 estimates.
    store.set_budget(engine, tenant, spent + estimate * 3 / 2, None)
    batch = {
        "items": [{"input": small["input"]}, {"input": small["input"]}],
        "chain": small["chain"],
        "params": small["params"],
    }
    assert http.post("/v1/batches", json=batch, headers=auth(key)).status_code == 402
    assert _job_count(engine, principal.tenant_id) == jobs_before

    # Exactly enough left: accepted. The monthly limit is checked the same way.
    store.set_budget(engine, tenant, spent + estimate, None)
    assert http.post("/v1/jobs", json=small, headers=auth(key)).status_code == 202
    store.set_budget(engine, tenant, None, spent)
    monthly = http.post("/v1/jobs", json=small, headers=auth(key))
    assert monthly.status_code == 402
    assert monthly.json()["error"]["details"][0]["scope"] == "monthly"

    budget = http.get("/v1/budget", headers=auth(key)).json()
    assert budget["daily_usd"] is None and Decimal(budget["monthly_usd"]) == spent


def test_batch_cap_stops_the_batch_mid_run_with_no_call_beyond_the_cap(
    isolated_env: dict[str, str], services: Services, fake: FakeProviderServer, tmp_path: Path
) -> None:
    from llmq.store.engine import get_engine
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import DISPATCH_BATCH

    # A model name of our own, priced in a user pricing file, so the fake provider's per-model
    # request count is this test's alone.
    model = f"capped-{uuid.uuid4().hex[:8]}"
    link = f"openai:{model}"
    pricing = tmp_path / "pricing.json"
    pricing.write_text(json.dumps({"version": "t", "models": {link: {"input": 1, "output": 2}}}))
    env = {**isolated_env, "LLMQ_PRICING_FILE": str(pricing)}
    engine = get_engine(env["DATABASE_URL"])
    principal = store.authenticate(engine, store.create_api_key(engine, "capped"))
    assert principal is not None

    n, max_tokens = 24, 40
    cap = Decimal("0.0008")  # about 6 calls of ~0.00013 USD (prompt ~50 tokens, output 40)
    # Complete answers of about max_tokens: estimates stay close to real costs, and nothing is
    # cut off (the output review would retry or fail a cut-off answer).
    answer = "The harbour board approved the plan; work starts in May and ends next year. " * 3
    fake.set_script(FakeScript(rules=[FaultRule(model=model, fault="reply", text=answer[:156])]))
    batch_id = store.insert_batch(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="default", chain=[link], meta={}, max_cost_usd=cap,
        items=[
            store.NewJob(input=_doc(i), params={"no_cache": True, "max_tokens": max_tokens})
            for i in range(n)
        ],
    )  # fmt: skip
    stack = Stack(env=env, log_dir=services.data_dir / f"logs-cap-{model}")
    try:
        stack.start_worker("cap", queues="llm.high,llm.default,llm.low", concurrency=6,
                           pool="threads")  # fmt: skip
        make_celery(env["REDIS_URL"]).send_task(
            DISPATCH_BATCH, args=[str(batch_id)], queue="llm.default"
        )

        def finished() -> list[Any] | None:
            with engine.connect() as conn:
                rows = list(
                    conn.execute(
                        text(
                            "SELECT id, status, error_code, cost_usd, attempts_made FROM jobs "
                            "WHERE batch_id = :b"
                        ),
                        {"b": batch_id},
                    )
                )
            return rows if all(r.status in TERMINAL for r in rows) else None

        rows = wait_for(finished, timeout=120, what="the capped batch to finish")
    finally:
        stack.stop()

    succeeded = [r for r in rows if r.status == "succeeded"]
    stopped = [r for r in rows if r.status == "failed"]
    assert len(succeeded) + len(stopped) == n
    assert 1 <= len(succeeded) < n, "the cap should stop the batch part-way"
    assert all(r.error_code == "budget_exceeded" for r in stopped)
    # No call beyond the cap: every call the provider saw is a recorded attempt of a job that
    # succeeded, the stopped jobs made none, and everything spent fits under the cap.
    calls = fake.stats()["by_model"].get(model, 0)
    assert calls == len(succeeded) == sum(r.attempts_made for r in rows)
    assert all(r.attempts_made == 0 and r.cost_usd == 0 for r in stopped)
    spent = store.batch_spend(engine, batch_id)
    assert 0 < spent <= cap
    # ... and at most what the cap allows: every call costs at least the cheapest one seen.
    assert calls <= cap // min(r.cost_usd for r in succeeded)


def test_batch_cap_is_stored_shown_and_validated(http: Any, new_key: Callable[[], str]) -> None:
    key = new_key()
    batch = {"items": [{"input": "A short note."}], "chain": ["local:extractive"]}
    accepted = http.post("/v1/batches", json={**batch, "max_cost_usd": "0.25"}, headers=auth(key))
    assert accepted.status_code == 202, accepted.text
    shown = http.get(f"/v1/batches/{accepted.json()['id']}", headers=auth(key)).json()
    assert Decimal(shown["max_cost_usd"]) == Decimal("0.25")
    for bad in (0, -1, "abc", "0.00000000001"):
        response = http.post("/v1/batches", json={**batch, "max_cost_usd": bad}, headers=auth(key))
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_request"

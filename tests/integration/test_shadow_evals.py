"""Shadow runs end to end, as a team comparing two variants sees them: a batch submitted with a
shadow spec, the real Celery worker, the fake provider through the real SDK, the eval log read
back through GET /v1/evals and `llmq evals`."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.evals.spec import ShadowSpec
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.execution.shadow import Shadows
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.providers.openai_provider import OpenAIProvider
from llmq.store.job_store import PostgresJobStore
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import auth, wait_for

DOC = (
    "The Riverside water board met on Tuesday to approve a new filtration plant. "
    "The plant will cost 14 million dollars and serve many residents."
)
PRIMARY_CHAIN, SHADOW_CHAIN = ["openai:gpt-4o-mini"], ["openai:gpt-5-nano"]
# The primary keeps to the source; the shadow invents a number and a place; one shadow fails.
SCRIPT = FakeScript(
    rules=[
        FaultRule(api="openai", model="gpt-5-nano", fault="status", status=400,
                  prompt_contains="Item number 3."),
        FaultRule(api="openai", model="gpt-5-nano", fault="reply",
                  text="The Atlantis board approved 99 million dollars."),
        FaultRule(api="openai", model="gpt-4o-mini", fault="reply",
                  text="The Riverside board approved 14 million dollars."),
    ]
)  # fmt: skip


def _doc(i: int) -> str:
    return f"{DOC} Item number {i}."


@pytest.fixture()
def fake(fake_provider: FakeProviderServer) -> Any:
    fake_provider.set_script(SCRIPT)
    yield fake_provider
    fake_provider.set_script(FakeScript())


def _batch(http: Any, key: str, body: dict[str, Any]) -> dict[str, Any]:
    accepted = http.post("/v1/batches", json=body, headers=auth(key))
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["id"]

    def done() -> dict[str, Any] | None:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        return batch if batch["status"] == "completed" else None

    return wait_for(done, 60, f"batch {batch_id}")


def _job(http: Any, key: str, body: dict[str, Any]) -> dict[str, Any]:
    accepted = http.post("/v1/jobs", json=body, headers=auth(key))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return job if job["status"] == "succeeded" else None

    return wait_for(done, 60, f"job {job_id}")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2 if len(ordered) % 2 == 0 else ordered[middle]


def test_a_shadow_variant_is_logged_and_reported_but_never_reaches_the_client(
    http: Any, new_key: Any, worker: Any, fake: Any, engine: Engine, stack_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    key = new_key()
    # Items 0-4 are answered (and cached) by the shadow's model first: a shadow must not use them.
    _batch(http, key, {"items": [{"input": _doc(i)} for i in range(5)], "chain": SHADOW_CHAIN})
    shadow_spec = {"chain": SHADOW_CHAIN, "percent": 100}
    batch = _batch(
        http, key,
        {"items": [{"input": _doc(i)} for i in range(10)], "chain": PRIMARY_CHAIN,
         "shadow": shadow_spec},
    )  # fmt: skip
    assert batch["counts"]["succeeded"] == 10 and sum(batch["counts"].values()) == 10

    def logged() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get("/v1/evals?template=summarize", headers=auth(key)).json()
        return body if body["rows"] == 20 else None

    evals = wait_for(logged, 60, "20 eval rows")
    with engine.connect() as conn:
        shadows = conn.execute(
            text(
                "SELECT s.id::text, s.status, s.cache_hit, s.batch_id, s.priority, s.cost_usd, "
                "(SELECT count(*) FROM attempts a WHERE a.job_id = s.id) AS attempts, "
                "(SELECT sum(latency_ms) FROM attempts a WHERE a.job_id = s.id) AS latency "
                "FROM jobs s JOIN jobs p ON p.id = s.shadow_of WHERE p.batch_id = :b"
            ),
            {"b": batch["id"]},
        ).all()
    assert len(shadows) == 10
    assert sorted(s.status for s in shadows) == ["failed"] + ["succeeded"] * 9
    assert all(s.batch_id is None and s.priority == "low" for s in shadows)
    # Never read from the cache (items 0-4 had answers there) ...
    assert all(not s.cache_hit and s.attempts >= 1 for s in shadows)

    # ... and never seen by the client: not in the job API, not in the batch's results.
    assert http.get(f"/v1/jobs/{shadows[0].id}", headers=auth(key)).status_code == 404
    lines = http.get(f"/v1/batches/{batch['id']}/results", headers=auth(key)).text.splitlines()
    results = [json.loads(line) for line in lines]
    assert len(results) == 10 and all("Atlantis" not in (r["result"] or "") for r in results)

    # ... nor written to the cache: the shadow's question asked again is computed afresh, while
    # an answer the cache does hold (item 1, from the first batch) is a hit.
    fresh = _job(http, key, {"input": _doc(7), "chain": SHADOW_CHAIN})
    cached = _job(http, key, {"input": _doc(1), "chain": SHADOW_CHAIN})
    assert (fresh["cache_hit"], cached["cache_hit"]) == (False, True)

    # Its cost is recorded, shown apart in usage, and counted by the tenant's spend (budgets).
    shadow_cost = sum((s.cost_usd for s in shadows), Decimal(0))
    assert shadow_cost > 0
    usage = http.get("/v1/usage", headers=auth(key)).json()
    assert Decimal(usage["shadow"]["cost_usd"]) == shadow_cost and usage["shadow"]["jobs"] == 10
    spent = Decimal(http.get("/v1/budget", headers=auth(key)).json()["spent_today_usd"])
    assert spent == Decimal(usage["total"]["cost_usd"]) and spent > shadow_cost

    # The report, against figures computed here from the jobs' own rows.
    by_role = {v["role"]: v for v in evals["variants"]}
    primary, shadow = by_role["primary"], by_role["shadow"]
    assert primary["variant"].endswith("openai:gpt-4o-mini") and primary["n"] == 10
    assert (shadow["n"], shadow["failed"], shadow["failure_rate"]) == (10, 1, 0.1)
    assert shadow["cost_per_1k_usd"] == pytest.approx(float(shadow_cost) * 1000 / 10)
    assert shadow["latency_p50_ms"] == pytest.approx(_median([float(s.latency) for s in shadows]))
    assert primary["scores"]["numbers_kept"]["mean"] == 1.0
    assert shadow["scores"]["numbers_kept"]["mean"] == 0.0
    # 9 pairs where both answered; every one lost its number and its entity: no spread at all.
    assert shadow["vs_primary"]["numbers_kept"] == {
        "n": 9, "mean": -1.0, "ci_low": -1.0, "ci_high": -1.0
    }  # fmt: skip
    assert shadow["vs_primary"]["entities_invented"]["mean"] == 1.0
    # Another tenant sees none of it.
    assert http.get("/v1/evals?template=summarize", headers=auth(new_key())).json()["rows"] == 0

    # The same report from the command line, as CSV and as a chart.
    port = free_port()
    stack = Stack(env=stack_env, log_dir=tmp_path / "logs")
    stack.start_api("127.0.0.1", port)
    try:
        env = {**os.environ, **stack_env, "LLMQ_API_URL": f"http://127.0.0.1:{port}",
               "LLMQ_API_KEY": key}  # fmt: skip
        chart = tmp_path / "evals.png"
        done = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "evals", "--template", "summarize",
             "--format", "csv", "--chart", str(chart)],
            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        stack.stop()
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    csv_shadow = dict(zip(header.split(","), rows[1].split(","), strict=True))
    assert csv_shadow["role"] == "shadow" and csv_shadow["numbers_kept_diff"] == "-1.0"
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_a_share_is_shadowed_exactly_as_the_job_ids_hash_says(
    http: Any, new_key: Any, worker: Any, fake: Any, engine: Engine
) -> None:
    key = new_key()
    shadow_spec = {"chain": SHADOW_CHAIN, "percent": 30}
    batch = _batch(
        http, key,
        {"items": [{"input": _doc(i + 20)} for i in range(20)], "chain": PRIMARY_CHAIN,
         "shadow": shadow_spec},
    )  # fmt: skip
    lines = http.get(f"/v1/batches/{batch['id']}/results", headers=auth(key)).text.splitlines()
    ids = [json.loads(line)["job_id"] for line in lines]
    # The share, computed here independently: SHA-256 of the id's text, first 8 bytes.
    chosen = {
        i for i in ids
        if int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / 2**64 < 0.30
    }  # fmt: skip

    # Every primary has finished, so every shadow row exists: wait until they have all ended.
    def shadowed() -> list[set[str]] | None:  # in a list: an empty set is an answer too
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT shadow_of::text, status FROM jobs "
                     "WHERE shadow_of = ANY(CAST(:ids AS uuid[]))"),
                {"ids": ids},
            ).all()  # fmt: skip
        if any(status not in ("succeeded", "failed") for _, status in rows):
            return None
        return [{shadow_of for shadow_of, _ in rows}]

    assert wait_for(shadowed, 60, "the shadows to end") == [chosen]


def test_bad_shadow_specs_and_report_queries_are_422s(http: Any, new_key: Any) -> None:
    key = new_key()
    item = [{"input": DOC}]
    for shadow, says in [
        ({"chain": ["nope:model"]}, "unknown provider"),
        ({"chain": SHADOW_CHAIN, "version": 99}, "no version 99"),
        ({"chain": SHADOW_CHAIN, "percent": 150}, "percent"),
        ({"chain": SHADOW_CHAIN, "judge": "nope:judge"}, "unknown provider"),
        ({"chain": SHADOW_CHAIN, "model": "openai:gpt-4o-mini"}, "model"),
        ({"percent": 10}, "chain"),
    ]:
        answer = http.post("/v1/batches", json={"items": item, "shadow": shadow}, headers=auth(key))
        assert answer.status_code == 422, (shadow, answer.text)
        assert says in answer.text
    for query in ["", "?template=", "?template=no-such-template", "?template=summarize&since=x"]:
        answer = http.get(f"/v1/evals{query}", headers=auth(key))
        assert answer.status_code == 422, (query, answer.text)
        assert "error" in answer.json()
    assert http.get(f"/v1/evals/pairs/{uuid.uuid4()}", headers=auth(key)).status_code == 404


def test_a_judge_scores_each_pair_as_a_priced_job_of_its_own(
    http: Any, new_key: Any, worker: Any, fake: Any, engine: Engine
) -> None:
    # The judge prefers the answer that keeps the source's figures, in whichever place it is
    # shown: the variant's order is shuffled per judge job.
    fake.set_script(
        FakeScript(
            rules=[
                FaultRule(api="openai", model="gpt-4.1-mini", fault="reply",
                          text='{"a": 9, "b": 2}', prompt_contains="ANSWER A:\nThe Riverside"),
                FaultRule(api="openai", model="gpt-4.1-mini", fault="reply",
                          text='{"a": 2, "b": 9}'),
                *SCRIPT.rules,
            ]
        )
    )  # fmt: skip
    key = new_key()
    shadow_spec = {"chain": SHADOW_CHAIN, "judge": "openai:gpt-4.1-mini"}
    batch = _batch(
        http, key,
        {"items": [{"input": _doc(i + 50)} for i in range(3)], "chain": PRIMARY_CHAIN,
         "shadow": shadow_spec},
    )  # fmt: skip

    def judged() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get("/v1/evals?template=summarize", headers=auth(key)).json()
        shadow = next((v for v in body["variants"] if v["role"] == "shadow"), None)
        done = shadow is not None and shadow["vs_primary"].get("judge", {}).get("n") == 3
        return shadow if done else None

    shadow = wait_for(judged, 60, "3 judged pairs")
    assert shadow["scores"]["judge"] == {"mean": 2.0, "p50": 2.0}
    assert shadow["vs_primary"]["judge"] == {"n": 3, "mean": -7.0, "ci_low": -7.0, "ci_high": -7.0}

    with engine.connect() as conn:
        judges = conn.execute(
            text(
                "SELECT k.id::text, k.status, k.batch_id, k.priority, k.cost_usd FROM jobs k "
                "JOIN jobs p ON p.id = k.shadow_of WHERE p.batch_id = :b AND k.kind = 'judge'"
            ),
            {"b": batch["id"]},
        ).all()
        evals_cost = conn.execute(
            text(
                "SELECT sum(k.cost_usd) FROM jobs k JOIN jobs p ON p.id = k.shadow_of "
                "WHERE p.batch_id = :b"
            ),
            {"b": batch["id"]},
        ).scalar_one()
    assert len(judges) == 3 and all(j.status == "succeeded" for j in judges)
    assert all(j.batch_id is None and j.priority == "low" and j.cost_usd > 0 for j in judges)
    assert http.get(f"/v1/jobs/{judges[0].id}", headers=auth(key)).status_code == 404
    # The judges' calls are in the usage's shadow part, with the shadows' own.
    usage = http.get("/v1/usage", headers=auth(key)).json()
    assert Decimal(usage["shadow"]["cost_usd"]) == evals_cost and usage["shadow"]["jobs"] == 6


def test_a_shadow_whose_message_was_lost_is_published_by_the_reconciler(
    worker: Any, fake: Any, engine: Engine, new_key: Any
) -> None:
    """The template's shadow (as LLMQ_TEMPLATE_SHADOW gives it) is written with the primary's
    finish; the broker refuses its message, and the workers' reconciler sends it later."""
    principal = store.authenticate(engine, new_key())
    assert principal is not None
    job_id = store.insert_job(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="default", chain=PRIMARY_CHAIN, item=store.NewJob(input=_doc(80)),
    )  # fmt: skip

    def broker_down(jobs: Any) -> None:
        raise ConnectionError("broker unreachable")

    shadows = Shadows(
        {"summarize": ShadowSpec(chain=tuple(SHADOW_CHAIN))},
        functools.partial(store.batch_shadow, engine),
        broker_down,
        functools.partial(store.undo_dispatch, engine),
    )
    provider = OpenAIProvider("k", fake.openai_base_url, connect_timeout_s=2, read_timeout_s=5)
    pipeline = Pipeline(
        PostgresJobStore(engine), {"openai": provider}, load_price_table(),
        PipelineConfig(lease_s=30), shadows=shadows,
    )  # fmt: skip
    assert pipeline.run(str(job_id)) == "succeeded"

    def shadow_row() -> Any:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT status, dispatched_at FROM jobs WHERE shadow_of = :id"),
                {"id": job_id},
            ).one()

    assert shadow_row().dispatched_at is None  # left for the reconciler
    wait_for(lambda: shadow_row().status == "succeeded", 30, "the reconciler to run the shadow")
    with engine.connect() as conn:
        roles = conn.execute(
            text("SELECT role FROM eval_log WHERE pair_id = :id ORDER BY role"), {"id": job_id}
        ).scalars().all()  # fmt: skip
    assert roles == ["primary", "shadow"]

"""Long documents end to end: a 50,000-token document is split into chunk jobs that the real
worker runs in parallel, reduced into one summary, and reported with progress and full cost."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from llmq import store
from llmq.longdocs.tokenizer import get_tokenizer
from llmq.testing.fake_provider import FakeScript, FaultRule

from ..helpers import auth, wait_for


def long_document(min_tokens: int = 50_000) -> str:
    """Distinct paragraphs (a fresh tag per call, so no cache hit from an earlier run)."""
    tag = uuid.uuid4().hex[:8]
    paragraphs = []
    tokens = 0
    n = 0
    while tokens < min_tokens * 1.05:  # joined paragraphs merge a token at each break
        paragraph = (
            f"Section {n} of report {tag}. The northern wind farm logged {n * 7 % 97} turbine "
            f"faults in week {n}, and crews replaced {n % 13} gearboxes. Output reached "
            f"{1000 + n * 3} megawatt hours. The operator plans to inspect blade set {n % 41} "
            f"before the storm season. Budget line {n} stays within the approved envelope."
        )
        paragraphs.append(paragraph)
        tokens += get_tokenizer().count(paragraph) + 2
        n += 1
    return "\n\n".join(paragraphs)


def children(engine: Engine, parent_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT id, chunk_level, chunk_index, status, template, input_tokens, "
                    "output_tokens, cost_usd, attempts_made, error_code FROM jobs "
                    "WHERE parent_id = :p ORDER BY chunk_level, chunk_index"
                ),
                {"p": parent_id},
            ).mappings()
        ]


def wait_job(http: Any, key: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return job if job["status"] not in ("queued", "running", "retrying", "waiting") else None

    return wait_for(ended, timeout, f"job {job_id} to end")


def test_50k_token_document_is_mapped_and_reduced_on_the_fake_provider(
    http: Any, new_key: Any, worker: Any, fake_provider: Any, engine: Engine
) -> None:
    # The first call fails with a 500 (one chunk is retried by the normal path) and every call
    # is slow enough to watch progress while the chunks run.
    fake_provider.set_script(
        FakeScript(
            latency_ms=300,
            # Only this document's calls: a job another test left behind must not take the 500.
            rules=[
                FaultRule(
                    model="gpt-4o-mini",
                    fault="status",
                    status=500,
                    first_n=1,
                    prompt_contains="The northern wind farm logged",
                )
            ],
        )
    )
    key = new_key()
    document = long_document()
    assert get_tokenizer().count(document) >= 50_000
    accepted = http.post(
        "/v1/jobs",
        json={"input": document, "chain": ["openai:gpt-4o-mini"], "params": {"style": "bullets"}},
        headers=auth(key),
    )
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]

    def mid_map() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        p = job["progress"]
        return job if p and p["stage"] == "map" and p["chunks_done"] < p["chunks_total"] else None

    running = wait_for(mid_map, 60, "the parent to report map progress")
    assert running["status"] == "waiting"

    job = wait_job(http, key, job_id)
    fake_provider.set_script(FakeScript())
    assert job["status"] == "succeeded", job
    split = job["route"][0]["map_reduce"]
    assert split["document_tokens"] >= 50_000
    assert split["tokenizer"] == "cl100k_base"
    assert split["chunks"] >= 50_000 // split["chunk_tokens"]
    assert job["progress"] == {
        "chunks_total": split["chunks"],
        "chunks_done": split["chunks"],
        "chunks_failed": 0,
        "stage": "done",
        "reduce_level": 1,
        "reduce_jobs_total": 1,
        "reduce_jobs_done": 1,
    }
    # The final summary comes from the reduce job, in the caller's template and style.
    assert job["result"].startswith("[fake:gpt-4o-mini]")
    assert (job["provider"], job["model"]) == ("openai", "gpt-4o-mini")

    kids = children(engine, job_id)
    chunks = [c for c in kids if c["chunk_level"] == 0]
    assert [c["chunk_index"] for c in chunks] == list(range(split["chunks"]))
    assert {c["template"] for c in chunks} == {"summarize_section"}
    assert [c["template"] for c in kids if c["chunk_level"] == 1] == ["summarize"]
    assert all(c["status"] == "succeeded" for c in kids)
    # One chunk met the scripted 500 and succeeded on its retry.
    assert sorted(c["attempts_made"] for c in chunks)[-1] == 2
    retried = next(c for c in chunks if c["attempts_made"] == 2)
    child = http.get(f"/v1/jobs/{retried['id']}", headers=auth(key)).json()
    assert [a["outcome"] for a in child["attempts"]] == ["server_error", "ok"]
    assert child["parent_id"] == job_id

    # The parent's tokens and cost are every child's, exactly.
    assert job["input_tokens"] == sum(c["input_tokens"] for c in kids) > 50_000
    assert job["output_tokens"] == sum(c["output_tokens"] for c in kids)
    assert Decimal(job["cost_usd"]) == sum(c["cost_usd"] for c in kids) > 0


def test_50k_token_document_is_summarized_by_the_local_provider(
    http: Any, new_key: Any, worker: Any, engine: Engine
) -> None:
    key = new_key()
    accepted = http.post(
        "/v1/jobs",
        json={"input": long_document(), "chain": ["local:extractive"]},
        headers=auth(key),
    )
    job = wait_job(http, key, accepted.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["provider"] == "local" and job["result"]
    assert len(job["result"].split()) <= 150  # one paragraph, not the document
    assert job["progress"]["chunks_done"] == job["route"][0]["map_reduce"]["chunks"] >= 6
    assert job["cost_usd"] == "0.0000000000"
    assert job["input_tokens"] >= 50_000


def test_a_chunk_that_fails_for_good_fails_the_parent(
    http: Any, new_key: Any, worker: Any, fake_provider: Any, engine: Engine
) -> None:
    fake_provider.set_script(
        FakeScript(rules=[FaultRule(model="gpt-5-nano", fault="status", status=400)])
    )
    key = new_key()
    accepted = http.post(
        "/v1/jobs",
        json={"input": long_document(30_000), "chain": ["openai:gpt-5-nano"]},
        headers=auth(key),
    )
    job = wait_job(http, key, accepted.json()["id"])
    assert job["status"] == "failed"
    assert job["error_code"] == "chunk_failed"
    assert job["error_message"].startswith("part ")
    assert "failed: all_providers_failed" in job["error_message"]
    kids = children(engine, job["id"])
    assert {c["chunk_level"] for c in kids} == {0}  # no reduce step after a failed chunk
    wait_for(
        lambda: all(c["status"] in ("failed", "cancelled") for c in children(engine, job["id"])),
        60,
        "the other chunks to end",
    )
    # Only now: a chunk still waiting for its turn at the link (its first calls are probed one
    # at a time, llmq/resilience/ratelimit.py) must meet the same fault.
    fake_provider.set_script(FakeScript())
    assert job["progress"]["chunks_failed"] >= 1


def test_the_reconciler_advances_a_parent_whose_advance_was_interrupted(
    worker: Any, engine: Engine, new_key: Any, http: Any
) -> None:
    """A worker died between finishing the last chunk and advancing the parent: the parent
    waits with all chunks done, and the reconciler's sweep carries on."""
    key = new_key()
    principal = store.authenticate(engine, key)
    assert principal is not None
    parent_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, status, priority, template, template_version, "
                "input, chain, started_at) VALUES (:id, :t, 'waiting', 'default', 'summarize', 1, "
                "'(long document)', CAST(:chain AS jsonb), now())"
            ),
            {"id": parent_id, "t": principal.tenant_id, "chain": '["local:extractive"]'},
        )
        for i, summary in enumerate(
            [
                "The board approved the new filtration plant at a cost of 14 million dollars.",
                "Rates rise by 2 percent and a state loan covers the rest of the cost.",
            ]
        ):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, status, priority, template, "
                    "template_version, input, chain, parent_id, chunk_level, chunk_index, "
                    "result, finished_at) VALUES (:id, :t, 'succeeded', 'default', "
                    "'summarize_section', 1, 'chunk', CAST(:chain AS jsonb), :p, 0, :i, :r, now())"
                ),
                {
                    "id": uuid.uuid4(),
                    "t": principal.tenant_id,
                    "chain": '["local:extractive"]',
                    "p": parent_id,
                    "i": i,
                    "r": summary,
                },
            )
    job = wait_job(http, key, str(parent_id), timeout=60)
    assert job["status"] == "succeeded"
    assert "filtration plant" in job["result"]
    assert job["progress"]["reduce_jobs_done"] == 1

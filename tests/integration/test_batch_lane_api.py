"""Choosing the provider Batch lane over HTTP: JSON and JSONL, refused for priority high, and
what a job shows of it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from ..helpers import auth

DOC = "The library extends its opening hours. It will open at eight. Entry stays free."
CHAIN = ["openai:gpt-4o-mini"]


def _jobs(engine: Engine, batch_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id::text, lane FROM jobs WHERE batch_id = :b ORDER BY seq"),
            {"b": batch_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_a_batch_chooses_its_lane_in_json_or_jsonl(http: Any, new_key: Any, engine: Engine) -> None:
    key = new_key()
    body = {"items": [{"input": DOC}], "chain": CHAIN, "lane": "provider_batch"}
    refused = http.post("/v1/batches", json={**body, "priority": "high"}, headers=auth(key))
    assert refused.status_code == 422
    assert "lane provider_batch cannot be used with priority high" in refused.text
    unknown = http.post("/v1/batches", json={**body, "lane": "cheap"}, headers=auth(key))
    assert unknown.status_code == 422 and "lane" in unknown.text

    by_json = http.post("/v1/batches", json=body, headers=auth(key))
    assert by_json.status_code == 202, by_json.text
    upload = http.post(
        "/v1/batches",
        files={"file": ("b.jsonl", (json.dumps({"input": DOC}) + "\n").encode())},
        data={"lane": "provider_batch", "chain": ",".join(CHAIN), "priority": "low"},
        headers=auth(key),
    )
    assert upload.status_code == 202, upload.text
    default = http.post("/v1/batches", json={**body, "lane": "sync"}, headers=auth(key))
    assert default.status_code == 202

    lanes = [lane for b in (by_json, upload) for _, lane in _jobs(engine, b.json()["id"])]
    assert lanes == ["provider_batch", "provider_batch"]
    assert [lane for _, lane in _jobs(engine, default.json()["id"])] == ["sync"]
    for accepted, lane in ((by_json, "provider_batch"), (upload, "provider_batch"),
                           (default, "sync")):  # fmt: skip
        shown_batch = http.get(f"/v1/batches/{accepted.json()['id']}", headers=auth(key))
        assert shown_batch.json()["lane"] == lane
    job_id = _jobs(engine, by_json.json()["id"])[0][0]
    shown = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
    assert shown["lane"] == "provider_batch" and shown["status"] == "queued"
    assert shown["upstream_batch_id"] is None  # not uploaded yet
    # Waiting for an upload, a lane job cancels at once like any waiting job.
    # (The sync batch is left alone: a worker another test left running may have finished it.)
    for accepted in (by_json, upload):
        cancelled = http.post(f"/v1/batches/{accepted.json()['id']}/cancel", headers=auth(key))
        assert cancelled.status_code == 200, cancelled.text

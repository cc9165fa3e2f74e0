"""Submission formats and idempotency: JSONL uploads (validated line by line, all or nothing)
and Idempotency-Key (a retry returns the first answer, never a second job or batch)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from sqlalchemy import Engine, text

from llmq import store

from ..helpers import auth, wait_for


def _jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def test_jsonl_upload_runs_like_a_json_batch(http: Any, new_key: Any, worker: Any) -> None:
    key = new_key()
    rows = [
        {"custom_id": f"doc-{i}", "input": f"Report {i}. The bridge reopened. Traffic eased."}
        for i in range(3)
    ]
    accepted = http.post(
        "/v1/batches",
        files={"file": ("docs.jsonl", _jsonl(rows), "application/x-ndjson")},
        data={"chain": "local:extractive", "priority": "high", "metadata": '{"source": "up"}'},
        headers=auth(key),
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["item_count"] == 3
    batch_id = accepted.json()["id"]

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        return body if body["status"] == "completed" else None

    batch = wait_for(done, 60, "uploaded batch to complete")
    assert batch["priority"] == "high" and batch["metadata"] == {"source": "up"}
    assert batch["chain"] == ["local:extractive"]
    results = [json.loads(line) for line in http.get(
        f"/v1/batches/{batch_id}/results", headers=auth(key)).text.splitlines()]  # fmt: skip
    assert [r["custom_id"] for r in results] == ["doc-0", "doc-1", "doc-2"]
    assert {r["status"] for r in results} == {"succeeded"}


def test_bad_jsonl_lines_are_422_with_line_and_field_and_write_nothing(
    http: Any, new_key: Any, engine: Engine
) -> None:
    key = new_key()
    before = _count(engine, "SELECT count(*) FROM jobs")
    body = _jsonl(
        [
            {"input": "fine"},
            {"custom_id": "x"},  # line 2: no input
            "",  # blank lines are skipped, numbering continues
            "{not json",  # line 4
            {"input": "fine", "priority": "urgent"},  # line 5: unknown item field
        ]
    )
    response = http.post("/v1/batches", files={"file": ("b.jsonl", body)}, headers=auth(key))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_jsonl"
    assert error["message"].startswith("line 2: input: Field required")
    assert [(d["line"], d["loc"]) for d in error["details"]] == [
        (2, "input"),
        (4, "line"),
        (5, "priority"),
    ]
    assert _count(engine, "SELECT count(*) FROM jobs") == before


def test_upload_checks_form_fields_and_size(http: Any, new_key: Any, engine: Engine) -> None:
    key = new_key()
    one = _jsonl([{"input": "fine"}])
    bad_priority = http.post(
        "/v1/batches", files={"file": ("b.jsonl", one)}, data={"priority": "urgent"},
        headers=auth(key),
    )  # fmt: skip
    assert bad_priority.status_code == 422
    assert bad_priority.json()["error"]["message"].startswith("form.priority")
    no_file = http.post("/v1/batches", data={"template": "summarize"}, headers=auth(key))
    assert no_file.status_code == 422
    assert "form field 'file'" in no_file.json()["error"]["message"]
    before = _count(engine, "SELECT count(*) FROM jobs")
    too_many = _jsonl([{"input": "x"}] * 50_001)
    response = http.post("/v1/batches", files={"file": ("b.jsonl", too_many)}, headers=auth(key))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_items"
    assert _count(engine, "SELECT count(*) FROM jobs") == before


def test_idempotent_job_submission_returns_the_first_job(
    http: Any, new_key: Any, engine: Engine
) -> None:
    key = new_key()
    headers = {**auth(key), "Idempotency-Key": "job-attempt-1"}
    body = {"input": "The council met and approved the budget.", "chain": ["local:extractive"]}
    first = http.post("/v1/jobs", json=body, headers=headers)
    again = http.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    jobs = "SELECT count(*) FROM jobs WHERE tenant_id = :t"
    assert _count(engine, jobs, t=tenant.tenant_id) == 1

    changed = http.post("/v1/jobs", json={**body, "input": "another text"}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    as_batch = http.post("/v1/batches", json={"items": [{"input": "x"}]}, headers=headers)
    assert as_batch.status_code == 409
    # Keys are per tenant: another tenant's identical key is a new submission.
    other = http.post("/v1/jobs", json=body, headers={**auth(new_key()), "Idempotency-Key":
                                                      "job-attempt-1"})  # fmt: skip
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert _count(engine, jobs, t=tenant.tenant_id) == 1


def test_an_expired_idempotency_key_is_free_again_and_gets_deleted(
    http: Any, new_key: Any, engine: Engine
) -> None:
    key = new_key()
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    headers = {**auth(key), "Idempotency-Key": "nightly-2026-11-22"}
    body = {"input": "The council met and approved the budget.", "chain": ["local:extractive"]}
    first = http.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    with engine.begin() as conn:  # a day and a bit later
        conn.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                 "WHERE tenant_id = :t"), {"t": tenant.tenant_id},
        )  # fmt: skip
    reused = http.post("/v1/jobs", json={**body, "input": "Another day."}, headers=headers)
    assert reused.status_code == 202 and "Idempotent-Replayed" not in reused.headers
    assert reused.json()["id"] != first.json()["id"]
    replayed = http.post("/v1/jobs", json={**body, "input": "Another day."}, headers=headers)
    assert replayed.json() == reused.json()  # the key now belongs to the new submission

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                 "WHERE tenant_id = :t"), {"t": tenant.tenant_id},
        )  # fmt: skip
        assert store.delete_expired_idempotency_keys(conn, 86_400, 5000) >= 1
    keys = "SELECT count(*) FROM idempotency_keys WHERE tenant_id = :t"
    assert _count(engine, keys, t=tenant.tenant_id) == 0


def test_idempotent_batch_upload_and_json_are_the_same_submission(
    http: Any, new_key: Any, engine: Engine
) -> None:
    key = new_key()
    items = [{"custom_id": "a", "input": "First text."}, {"custom_id": "b", "input": "Second."}]
    headers = {**auth(key), "Idempotency-Key": "batch-7"}
    first = http.post("/v1/batches", json={"items": items}, headers=headers)
    uploaded = http.post("/v1/batches", files={"file": ("b.jsonl", _jsonl(items))},
                         headers=headers)  # fmt: skip
    assert first.status_code == uploaded.status_code == 202
    assert uploaded.json() == first.json() == {"id": first.json()["id"], "item_count": 2,
                                                "status": "queued"}  # fmt: skip
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    assert _count(engine, "SELECT count(*) FROM batches WHERE tenant_id = :t",
                  t=tenant.tenant_id) == 1  # fmt: skip
    assert _count(engine, "SELECT count(*) FROM jobs WHERE tenant_id = :t",
                  t=tenant.tenant_id) == 2  # fmt: skip
    too_long = http.post("/v1/batches", json={"items": items},
                         headers={**auth(key), "Idempotency-Key": "k" * 256})  # fmt: skip
    assert too_long.status_code == 422


def test_concurrent_submissions_with_one_key_make_one_batch(new_key: Any, engine: Engine) -> None:
    """The race the header exists for: N requests at once, one batch, every caller its id."""
    principal = store.authenticate(engine, new_key())
    assert principal is not None
    idem = store.Idempotency(
        key="race", endpoint="batches", request_hash="h" * 64, status_code=202,
        response={"item_count": 50, "status": "queued"},
    )  # fmt: skip
    answers: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def submit() -> None:
        start.wait()
        try:
            batch_id = store.insert_batch(
                engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
                priority="low", chain=["local:extractive"], meta={},
                items=[store.NewJob(input=f"text {i}") for i in range(50)], idempotency=idem,
            )  # fmt: skip
            answers.append(str(batch_id))
        except store.IdempotentReplay as replay:
            answers.append(replay.stored.response["id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(answers) == 8 and len(set(answers)) == 1
    uuid.UUID(answers[0])
    t = principal.tenant_id
    assert _count(engine, "SELECT count(*) FROM batches WHERE tenant_id = :t", t=t) == 1
    assert _count(engine, "SELECT count(*) FROM jobs WHERE tenant_id = :t", t=t) == 50

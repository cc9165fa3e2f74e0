"""The audit log as a security reviewer checks it: every event type is recorded with the right
actor, tenant and action and no secret or document text; the hash chain verifies, and an edited
or deleted row (written with the trigger disabled, as only the table's owner could) is named by
`llmq audit verify`; the app cannot UPDATE or DELETE a row; concurrent writers keep one chain;
GET /v1/admin/audit is admin-only, filters and paginates."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from llmq import store
from llmq.api import audit as api_audit

from ..helpers import auth

SECRET_MARKER = "Zebra-Quartz-7731 confidential paragraph"


def _llmq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture()
def admin_key(engine: Engine) -> str:
    return store.create_api_key(engine, f"ops-{uuid.uuid4().hex[:8]}", admin=True)


def _admin_id(engine: Engine, key: str) -> str:
    principal = store.authenticate(engine, key)
    assert principal is not None
    return str(principal.key_id)


def _events_since(engine: Engine, first_id: int) -> list[dict[str, Any]]:
    return [r for r in store.list_events(engine, limit=10_000) if r["id"] > first_id]


def _last_id(engine: Engine) -> int:
    rows = store.list_events(engine, limit=1)
    return rows[0]["id"] if rows else 0


def _assert_no_secrets(rows: list[dict[str, Any]], *secrets: str) -> None:
    dumped = json.dumps([{**r, "at": str(r["at"]), "tenant_id": str(r["tenant_id"])} for r in rows])
    for secret in (SECRET_MARKER, *secrets):
        assert secret not in dumped


def test_key_budget_and_webhook_events_carry_actor_tenant_and_no_secret(
    http: Any, engine: Engine, admin_key: str, stack_env: dict[str, str]
) -> None:
    start = _last_id(engine)
    admin_id = _admin_id(engine, admin_key)
    tenant = f"aud-{uuid.uuid4().hex[:8]}"
    created = http.post("/v1/admin/keys", json={"tenant": tenant}, headers=auth(admin_key))
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]
    assert http.delete(f"/v1/admin/keys/{key_id}", headers=auth(admin_key)).status_code == 204
    assert http.get("/v1/admin/keys", headers=auth(admin_key)).status_code == 200
    cli = _llmq("keys", "create", "--tenant", tenant, env=stack_env)
    assert cli.returncode == 0, cli.stderr
    cli_key = cli.stdout.strip().splitlines()[-1]
    done = _llmq("budgets", "set", "--tenant", tenant, "--daily", "5", env=stack_env)
    assert done.returncode == 0, done.stderr
    tenant_id = store.tenant_id_by_name(engine, tenant)

    rows = _events_since(engine, start)
    by_action = {(r["action"], r["actor"]): r for r in rows}
    made = by_action[("key.created", admin_id)]
    assert made["target"] == key_id and made["tenant_id"] == tenant_id
    revoked = by_action[("key.revoked", admin_id)]
    assert revoked["target"] == key_id and revoked["tenant_id"] == tenant_id
    assert ("admin.keys_listed", admin_id) in by_action
    assert by_action[("key.created", "cli")]["tenant_id"] == tenant_id
    budget = by_action[("budget.set", "cli")]
    assert budget["tenant_id"] == tenant_id and budget["details"]["daily_usd"] == "5"
    _assert_no_secrets(rows, key, cli_key, admin_key, store.hash_key(key))


def test_webhook_secret_events(http: Any, engine: Engine, new_key: Any) -> None:
    key = new_key()
    who = store.authenticate(engine, key)
    assert who is not None
    start = _last_id(engine)
    first = http.post("/v1/webhooks/secret", headers=auth(key))
    if first.status_code == 422:
        pytest.skip("webhooks disabled in this stack (no LLMQ_WEBHOOK_SIGNING_KEY)")
    second = http.post("/v1/webhooks/secret", headers=auth(key))
    rows = [r for r in _events_since(engine, start) if r["tenant_id"] == who.tenant_id]
    assert [r["action"] for r in reversed(rows)] == [
        "webhook_secret.created",
        "webhook_secret.rotated",
    ]
    assert all(r["actor"] == str(who.key_id) for r in rows)
    _assert_no_secrets(rows, first.json()["secret"], second.json()["secret"], key)


def test_downloads_are_recorded_without_content(http: Any, engine: Engine, new_key: Any) -> None:
    key = new_key()
    who = store.authenticate(engine, key)
    assert who is not None
    batch = http.post(
        "/v1/batches",
        json={"items": [{"custom_id": "a", "input": SECRET_MARKER}], "chain": ["local:extractive"]},
        headers=auth(key),
    )
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]
    start = _last_id(engine)
    assert http.get(f"/v1/batches/{batch_id}/results", headers=auth(key)).status_code == 200
    upload = http.post(
        "/openai/v1/files",
        files={"file": ("in.jsonl", json.dumps({"custom_id": "x", "method": "POST",
               "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [
                   {"role": "user", "content": SECRET_MARKER}]}}) + "\n")},
        data={"purpose": "batch"},
        headers=auth(key),
    )  # fmt: skip
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    assert http.get(f"/openai/v1/files/{file_id}/content", headers=auth(key)).status_code == 200

    rows = _events_since(engine, start)
    results = [r for r in rows if r["action"] == "results.downloaded"]
    files = [r for r in rows if r["action"] == "file.downloaded"]
    assert [(r["actor"], r["tenant_id"], r["target"]) for r in results] == [
        (str(who.key_id), who.tenant_id, batch_id)
    ]
    assert [(r["actor"], r["tenant_id"], r["target"]) for r in files] == [
        (str(who.key_id), who.tenant_id, file_id)
    ]
    _assert_no_secrets(rows, key)


def test_a_burst_of_failed_auth_is_one_row(http: Any, engine: Engine) -> None:
    start = _last_id(engine)
    for _ in range(api_audit.BURST_FAILURES * 2 + 3):
        bad = http.get("/v1/batches/x", headers=auth("llmq_wrong-" + uuid.uuid4().hex))
        assert bad.status_code == 401
    rows = [r for r in _events_since(engine, start) if r["action"] == "auth.failed_burst"]
    assert len(rows) == 1
    assert rows[0]["actor"] == "system" and rows[0]["tenant_id"] is None
    assert rows[0]["details"]["failures"] == api_audit.BURST_FAILURES
    _assert_no_secrets(rows, "llmq_wrong-")


def test_the_app_cannot_update_delete_or_truncate(engine: Engine) -> None:
    row_id = store.record_event(engine, store.AuditEvent("system", "admin.audit_read"))
    for statement in (
        "UPDATE audit_log SET actor = 'mallory' WHERE id = :id",
        "DELETE FROM audit_log WHERE id = :id",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"id": row_id})
    assert store.list_events(engine, limit=1)[0]["id"] == row_id


def test_unknown_action_and_secret_details_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        store.record_event(engine, store.AuditEvent("system", "made.up"))
    with pytest.raises(ValueError, match="may not carry"):
        store.record_event(engine, store.AuditEvent("system", "budget.set", details={"key": "x"}))


@pytest.fixture()
def tamper(engine: Engine) -> Iterator[Any]:
    """Run statements with the append-only trigger off, as the table's owner could; restore
    the rows afterwards so the session's chain stays intact for other tests."""
    saved: dict[int, dict[str, Any]] = {}

    def run(statement: str, row_id: int) -> None:
        with engine.begin() as conn:
            row = conn.execute(text("SELECT * FROM audit_log WHERE id = :id"), {"id": row_id})
            saved.setdefault(row_id, dict(row.mappings().one()))
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete"))
            conn.execute(text(statement), {"id": row_id})
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete"))

    yield run
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete"))
        for row in saved.values():
            conn.execute(text("DELETE FROM audit_log WHERE id = :id"), row)
            conn.execute(
                text(
                    "INSERT INTO audit_log VALUES (:id, :at, :actor, :tenant_id, :action, "
                    ":target, CAST(:details AS jsonb), :prev_hash, :hash)"
                ),
                {**row, "details": json.dumps(row["details"])},
            )
        conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete"))
    assert store.verify_chain(engine).broken_id is None


def _three(engine: Engine) -> list[int]:
    return [
        store.record_event(engine, store.AuditEvent("system", "admin.audit_read", target=str(i)))
        for i in range(3)
    ]


def test_verify_reports_intact_chain(engine: Engine, stack_env: dict[str, str]) -> None:
    _three(engine)
    done = _llmq("audit", "verify", "--batch-size", "2", env=stack_env)
    assert done.returncode == 0, done.stderr
    count = len(store.list_events(engine, limit=1_000_000))
    assert f"{count} rows, chain intact" in done.stdout


def test_verify_names_an_edited_row(engine: Engine, stack_env: dict[str, str], tamper: Any) -> None:
    ids = _three(engine)
    tamper('UPDATE audit_log SET details = \'{"daily_usd": "999"}\' WHERE id = :id', ids[1])
    done = _llmq("audit", "verify", "--batch-size", "2", env=stack_env)
    assert done.returncode == 1
    assert f"row {ids[1]}: its contents do not match its hash" in done.stderr


def test_verify_names_the_row_after_a_deleted_one(
    engine: Engine, stack_env: dict[str, str], tamper: Any
) -> None:
    ids = _three(engine)
    tamper("DELETE FROM audit_log WHERE id = :id", ids[1])
    done = _llmq("audit", "verify", env=stack_env)
    assert done.returncode == 1
    assert f"row {ids[2]}: its prev_hash does not match row {ids[0]}" in done.stderr


def test_verify_detects_reordered_rows(engine: Engine, tamper: Any) -> None:
    ids = _three(engine)
    # Swap two rows' contents (each keeps its own hash fields): the order no longer chains.
    tamper("UPDATE audit_log SET target = 'swapped' WHERE id = :id", ids[0])
    report = store.verify_chain(engine)
    assert report.broken_id == ids[0]


def test_concurrent_writers_keep_one_chain(engine: Engine) -> None:
    start = _last_id(engine)
    barrier = threading.Barrier(8)

    def write() -> None:
        barrier.wait(timeout=30)
        for _ in range(10):
            store.record_event(engine, store.AuditEvent("system", "admin.audit_read"))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    rows = sorted(_events_since(engine, start), key=lambda r: r["id"])
    assert len(rows) == 80
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert store.verify_chain(engine).broken_id is None


def test_admin_audit_endpoint_is_admin_only_filters_and_paginates(
    http: Any, engine: Engine, admin_key: str, new_key: Any
) -> None:
    assert http.get("/v1/admin/audit").status_code == 401
    assert http.get("/v1/admin/audit", headers=auth(new_key())).status_code == 403
    tenant = f"aud-page-{uuid.uuid4().hex[:8]}"
    for _ in range(5):
        store.create_api_key(engine, tenant)
    tenant_id = store.tenant_id_by_name(engine, tenant)
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"action": "key.*", "tenant_id": str(tenant_id), "limit": 2}
        page = http.get(
            "/v1/admin/audit", params={**params, **({"cursor": cursor} if cursor else {})},
            headers=auth(admin_key),
        )  # fmt: skip
        assert page.status_code == 200, page.text
        seen += [row["id"] for row in page.json()["data"]]
        assert all(row["action"] == "key.created" for row in page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    read = store.list_events(engine, action="admin.audit_read", limit=1)[0]
    assert read["actor"] == _admin_id(engine, admin_key)


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "YXVkaXQ6eA"},  # "audit:x"
        {"since": "yesterday"},
        {"until": "2026-01-01T00:00:00"},  # no time zone
        {"tenant_id": "nope"},
        {"action": "made.up"},
        {"limit": "0"},
    ],
)
def test_admin_audit_bad_query_is_422(http: Any, admin_key: str, params: dict[str, str]) -> None:
    response = http.get("/v1/admin/audit", params=params, headers=auth(admin_key))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_cli_audit_lists_with_filters_as_json(engine: Engine, stack_env: dict[str, str]) -> None:
    tenant = f"aud-cli-{uuid.uuid4().hex[:8]}"
    store.create_api_key(engine, tenant)
    done = _llmq("audit", "--tenant", tenant, "--action", "key.created", "--json",
                 "--since", "2000-01-01T00:00:00Z", env=stack_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["action"] == "key.created"
    bad = _llmq("audit", "--since", "yesterday", env=stack_env)
    assert bad.returncode == 1 and "--since" in bad.stderr


def test_operators_job_cancel_and_retry_are_recorded(
    engine: Engine, new_key: Any, stack_env: dict[str, str]
) -> None:
    """`llmq jobs cancel|retry` act across tenants with database access: each leaves a row."""
    principal = store.authenticate(engine, new_key())
    assert principal is not None
    batch_id = store.insert_batch(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="low", chain=["local:extractive"], meta={},
        items=[store.NewJob(input="an operator's document", custom_id="0")],
    )  # fmt: skip
    start = _last_id(engine)
    cancelled = _llmq("jobs", "cancel", str(batch_id), env=stack_env)
    assert cancelled.returncode == 0, cancelled.stderr
    with engine.connect() as conn:
        job = conn.exec_driver_sql(
            "SELECT id FROM jobs WHERE batch_id = %(b)s", {"b": batch_id}
        ).scalar_one()
    retried = _llmq("jobs", "retry", str(job), env=stack_env)
    assert retried.returncode == 0, retried.stderr
    rows = {r["action"]: r for r in _events_since(engine, start)}
    cancel = rows["admin.job_cancelled"]
    assert (cancel["actor"], cancel["target"], cancel["tenant_id"]) == (
        "cli", str(batch_id), principal.tenant_id)  # fmt: skip
    assert cancel["details"] == {"scope": "batch"}
    retry = rows["admin.job_retried"]
    assert (retry["actor"], retry["target"], retry["tenant_id"]) == (
        "cli", str(job), principal.tenant_id)  # fmt: skip

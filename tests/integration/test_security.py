"""Security at the API edge: admin key management, tenant isolation on every endpoint, per-key
rate limits shared across API instances, body/field caps, CORS."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from llmq import store

from ..helpers import auth


@pytest.fixture()
def admin_key(engine: Any) -> str:
    return store.create_api_key(engine, f"ops-{uuid.uuid4().hex[:8]}", admin=True)


@pytest.fixture()
def second_instance(stack_env: dict[str, str]) -> Iterator[TestClient]:
    """Another API process's worth of state (own auth cache, own limiter), same Redis/Postgres."""
    from llmq.api.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def _jobs_of_tenant(engine: Any, key: str) -> int:
    who = store.authenticate(engine, key)
    assert who is not None
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM jobs WHERE tenant_id = :t"), {"t": who.tenant_id}
            ).scalar_one()
        )


# --- keys ------------------------------------------------------------------------------------


def test_admin_creates_a_key_shown_once_that_works_and_is_stored_hashed(
    http: Any, engine: Any, admin_key: str
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    created = http.post("/v1/admin/keys", json={"tenant": tenant}, headers=auth(admin_key))
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("llmq_") and key.startswith(body["prefix"])
    assert body["tenant"] == tenant and body["admin"] is False and body["revoked_at"] is None
    job = http.post("/v1/jobs", json={"input": "hello"}, headers=auth(key))
    assert job.status_code == 202
    listed = http.get("/v1/admin/keys", headers=auth(admin_key)).json()["data"]
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1 and "key" not in mine[0]
    assert key not in http.get("/v1/admin/keys", headers=auth(admin_key)).text
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT key_hash FROM api_keys WHERE id = :i"), {"i": body["id"]}
        ).scalar_one()
    assert stored == store.hash_key(key) and key not in stored


def test_revoked_key_stops_working_at_once(http: Any, admin_key: str) -> None:
    created = http.post("/v1/admin/keys", json={"tenant": "revokees"}, headers=auth(admin_key))
    key, key_id = created.json()["key"], created.json()["id"]
    assert http.post("/v1/jobs", json={"input": "x"}, headers=auth(key)).status_code == 202
    assert http.delete(f"/v1/admin/keys/{key_id}", headers=auth(admin_key)).status_code == 204
    after = http.post("/v1/jobs", json={"input": "x"}, headers=auth(key))
    assert after.status_code == 401
    again = http.delete(f"/v1/admin/keys/{key_id}", headers=auth(admin_key))
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    listed = http.get("/v1/admin/keys", headers=auth(admin_key)).json()["data"]
    assert next(k for k in listed if k["id"] == key_id)["revoked_at"] is not None


def test_non_admin_keys_get_403_on_key_management(http: Any, new_key: Any) -> None:
    key = new_key()
    some_id = str(uuid.uuid4())
    for method, path, body in (
        ("POST", "/v1/admin/keys", {"tenant": "mine"}),
        ("GET", "/v1/admin/keys", None),
        ("DELETE", f"/v1/admin/keys/{some_id}", None),
    ):
        response = http.request(method, path, json=body, headers=auth(key))
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "forbidden"
    assert http.get("/v1/admin/keys").status_code == 401


# --- tenancy ---------------------------------------------------------------------------------

# Every path parameter a tenant-scoped route may take, per API surface, and which of the
# owner's resources fills it. A new route with a parameter not listed here fails the test until
# it is added.
PARAM_RESOURCES = {
    "/v1/": {"job_id": "job", "batch_id": "batch", "pair_id": "eval_pair"},
    "/openai/v1/": {"file_id": "openai_file", "batch_id": "openai_batch"},
    "/anthropic/v1/": {"batch_id": "anthropic_batch"},
}
OPERATOR_PREFIXES = ("/v1/admin/",)  # admin keys act across tenants (403 for tenants)
PRIVATE = "a private document"


def _tenant_scoped_routes(app: Any) -> list[tuple[str, str]]:
    # The app's own route table as it publishes it (FastAPI >= 0.16x includes routers lazily,
    # so app.routes holds router wrappers; the OpenAPI paths are the flattened, public list).
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if "{" not in path or path.startswith(OPERATOR_PREFIXES):
            continue
        for method in operations:
            if method.upper() not in ("HEAD", "OPTIONS"):
                routes.append((method.upper(), path))
    return routes


def _owner_resources(http: Any, key: str) -> dict[str, str]:
    """One of each kind of resource, created by `key` through its own API surface."""
    job = http.post("/v1/jobs", json={"input": PRIVATE}, headers=auth(key))
    batch = http.post("/v1/batches", json={"items": [{"input": PRIVATE}]}, headers=auth(key))
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                     "messages": [{"role": "user", "content": PRIVATE}]}}  # fmt: skip
    file = http.post(
        "/openai/v1/files", data={"purpose": "batch"},
        files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}, headers=auth(key),
    )  # fmt: skip
    openai_batch = http.post(
        "/openai/v1/batches", headers=auth(key),
        json={"input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions",
              "completion_window": "24h"},
    )  # fmt: skip
    anthropic_batch = http.post(
        "/anthropic/v1/messages/batches", headers=auth(key),
        json={"requests": [{"custom_id": "r1", "params": {
            "model": "claude-haiku-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": PRIVATE}]}}]},
    )  # fmt: skip
    created = (job, batch, file, openai_batch, anthropic_batch)
    assert all(r.status_code in (200, 201, 202) for r in created), [r.text for r in created]
    return {
        "job": job.json()["id"], "batch": batch.json()["id"], "openai_file": file.json()["id"],
        "openai_batch": openai_batch.json()["id"], "anthropic_batch": anthropic_batch.json()["id"],
    }  # fmt: skip


def _is_not_found(response: Any, prefix: str) -> bool:
    """404 in the surface's own error shape (the compat SDKs parse theirs)."""
    if response.status_code != 404:
        return False
    error = response.json()["error"]
    if prefix == "/anthropic/v1/":
        return bool(error["type"] == "not_found_error")
    if prefix == "/openai/v1/":
        return bool(error["type"] == "invalid_request_error")
    return bool(error["code"] == "not_found")


def _owner_eval_pair(engine: Any, key: str, job_id: str) -> str:
    """An evaluation pair of the owner (its primary's row; a shadow run writes the same)."""
    principal = store.authenticate(engine, key)
    assert principal is not None
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO eval_log (tenant_id, job_id, pair_id, role, template, "
                "template_version, chain, variant, status, output) VALUES (:t, :j, :j, "
                "'primary', 'summarize', 1, CAST('[]' AS jsonb), 'v1', 'succeeded', :o)"
            ),
            {"t": principal.tenant_id, "j": job_id, "o": PRIVATE},
        )
    return job_id


def test_every_tenant_scoped_endpoint_hides_other_tenants_resources(
    app: Any, http: Any, new_key: Any, engine: Any
) -> None:
    routes = _tenant_scoped_routes(app)
    # The enumeration sees the endpoints we know of (and every one added later).
    assert {("GET", "/v1/jobs/{job_id}"), ("GET", "/v1/batches/{batch_id}"),
            ("GET", "/openai/v1/files/{file_id}")} <= set(routes)  # fmt: skip
    owner, stranger = new_key(), new_key()
    ids = _owner_resources(http, owner)
    ids["eval_pair"] = _owner_eval_pair(engine, owner, ids["job"])
    failures = []
    for method, path in routes:
        prefix = next((p for p in PARAM_RESOURCES if path.startswith(p)), None)
        if prefix is None:
            failures.append(f"{method} {path}: add its API surface to PARAM_RESOURCES")
            continue
        params = re.findall(r"{(\w+)(?::\w+)?}", path)
        unknown = [p for p in params if p not in PARAM_RESOURCES[prefix]]
        if unknown:
            failures.append(f"{method} {path}: add {unknown} to PARAM_RESOURCES[{prefix!r}]")
            continue
        names = PARAM_RESOURCES[prefix]
        url = re.sub(r"{(\w+)(?::\w+)?}", lambda m, names=names: ids[names[m[1]]], path)
        body = {} if method in ("POST", "PUT", "PATCH") else None
        response = http.request(method, url, json=body, headers=auth(stranger))
        if not _is_not_found(response, prefix):
            failures.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
        elif PRIVATE in response.text:
            failures.append(f"{method} {url}: 404 body leaks the owner's data")
    assert not failures, "\n".join(failures)
    # The owner still sees them: the 404s are about tenancy, not broken routes.
    assert http.get(f"/v1/jobs/{ids['job']}", headers=auth(owner)).status_code == 200
    assert http.get(f"/v1/batches/{ids['batch']}", headers=auth(owner)).status_code == 200
    assert http.get(f"/v1/evals/pairs/{ids['eval_pair']}", headers=auth(owner)).status_code == 200
    assert http.get(f"/openai/v1/files/{ids['openai_file']}", headers=auth(owner)).is_success
    assert http.get(
        f"/anthropic/v1/messages/batches/{ids['anthropic_batch']}", headers=auth(owner)
    ).is_success


# --- rate limits -----------------------------------------------------------------------------


def test_requests_per_minute_are_shared_by_two_api_instances(
    http: Any, second_instance: TestClient, engine: Any
) -> None:
    key = store.create_api_key(engine, f"rl-{uuid.uuid4().hex[:6]}", requests_per_min=3)
    missing = f"/v1/jobs/{uuid.uuid4()}"
    codes = [
        client.get(missing, headers=auth(key)).status_code
        for client in (http, second_instance, http)
    ]
    assert codes == [404, 404, 404]  # admitted (and the job does not exist)
    limited = second_instance.get(missing, headers=auth(key))
    assert limited.status_code == 429
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 60
    error = limited.json()["error"]
    assert error["code"] == "rate_limited" and "3 requests per minute" in error["message"]
    assert http.get(missing, headers=auth(key)).status_code == 429


def test_items_per_minute_count_batch_items_and_write_nothing_when_refused(
    http: Any, second_instance: TestClient, engine: Any
) -> None:
    key = store.create_api_key(engine, f"rl-{uuid.uuid4().hex[:6]}", items_per_min=5)
    three = {"items": [{"input": f"doc {i}"} for i in range(3)]}
    assert http.post("/v1/batches", json=three, headers=auth(key)).status_code == 202
    refused = second_instance.post("/v1/batches", json=three, headers=auth(key))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "5 items per minute" in refused.json()["error"]["message"]
    assert _jobs_of_tenant(engine, key) == 3  # the refused batch wrote nothing
    # Room remains for a smaller ask within the same minute.
    assert http.post("/v1/jobs", json={"input": "one"}, headers=auth(key)).status_code == 202
    assert _jobs_of_tenant(engine, key) == 4


def test_default_limits_apply_to_keys_without_their_own(
    stack_env: dict[str, str], new_key: Any
) -> None:
    from llmq.api.app import create_app
    from llmq.settings import Settings

    app = create_app(Settings(key_requests_per_min=2))
    key = new_key()
    with TestClient(app, raise_server_exceptions=False) as client:
        codes = [client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code
                 for _ in range(3)]  # fmt: skip
    assert codes == [404, 404, 429]


# --- request limits --------------------------------------------------------------------------


@pytest.fixture()
def small_body_app(stack_env: dict[str, str]) -> Iterator[TestClient]:
    from llmq.api.app import create_app
    from llmq.settings import Settings

    with TestClient(
        create_app(Settings(max_body_bytes=2_000)), raise_server_exceptions=False
    ) as client:
        yield client


def test_oversized_body_gets_413_by_declared_length(
    small_body_app: TestClient, new_key: Any, engine: Any
) -> None:
    key = new_key()
    response = small_body_app.post("/v1/jobs", json={"input": "x" * 5_000}, headers=auth(key))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert _jobs_of_tenant(engine, key) == 0
    fits = small_body_app.post("/v1/jobs", json={"input": "x" * 500}, headers=auth(key))
    assert fits.status_code == 202


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"input": "x", "template": "t" * 101}, "body.template"),
        ({"input": "x", "params": {"style": "s" * 51}}, "body.params.style"),
        ({"input": "x", "chain": ["openai:" + "m" * 300]}, "body.chain.0"),
        ({"input": "x", "custom_id": "c" * 201}, "body.custom_id"),
        ({"input": "x", "metadata": {"blob": "b" * 20_000}}, "body.metadata"),
        ({"input": "nul \x00 inside"}, "body.input"),
        ({"input": "x", "metadata": {"k": "nul \x00"}}, "body.metadata"),
        # A lone surrogate, as a JSON escape (valid JSON, not storable text).
        (b'{"input": "x", "custom_id": "\\ud800"}', "body.custom_id"),
    ],
)
def test_string_caps_and_unstorable_text_get_422(
    http: Any, new_key: Any, body: dict[str, Any] | bytes, where: str
) -> None:
    headers = {**auth(new_key()), "content-type": "application/json"}
    if isinstance(body, bytes):
        response = http.post("/v1/jobs", content=body, headers=headers)
    else:
        response = http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(where)


def test_unknown_fields_are_rejected_everywhere(http: Any, new_key: Any) -> None:
    key = new_key()
    batch = http.post(
        "/v1/batches", json={"items": [{"input": "x", "inptu": "typo"}]}, headers=auth(key)
    )
    assert batch.status_code == 422
    assert batch.json()["error"]["message"].startswith("body.items.0.inptu")


def test_batch_item_count_is_capped(stack_env: dict[str, str], new_key: Any) -> None:
    from llmq.api.app import create_app
    from llmq.settings import Settings

    with TestClient(create_app(Settings(max_batch_items=3)), raise_server_exceptions=False) as c:
        response = c.post(
            "/v1/batches", json={"items": [{"input": "x"}] * 4}, headers=auth(new_key())
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_items"


# --- CORS ------------------------------------------------------------------------------------


def test_cors_is_off_by_default_and_on_for_configured_origins(
    http: Any, stack_env: dict[str, str]
) -> None:
    from llmq.api.app import create_app
    from llmq.settings import Settings

    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    off = http.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    simple = http.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in simple.headers

    app = create_app(Settings(cors_origins="https://app.example"))  # type: ignore[arg-type]
    with TestClient(app) as client:
        allowed = client.options("/v1/jobs", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_batch_file_uploads_have_their_own_cap_above_the_body_cap(
    stack_env: dict[str, str], new_key: Any
) -> None:
    from llmq.api.app import create_app
    from llmq.settings import Settings

    # A batch input file may be larger than any JSON request: LLMQ_COMPAT_MAX_FILE_BYTES, not
    # LLMQ_MAX_BODY_BYTES, decides (it used to be refused by the smaller body cap first).
    settings = Settings(max_body_bytes=2_000, compat_max_file_bytes=20_000)
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": "x" * 100}]}})  # fmt: skip
    key = new_key()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def upload(lines: int) -> Any:
            data = ("\n".join([line] * lines) + "\n").encode()
            return client.post(
                "/openai/v1/files", headers=auth(key), data={"purpose": "batch"},
                files={"file": ("in.jsonl", data, "application/jsonl")},
            )  # fmt: skip

        fits = upload(40)  # ~8 kB: over the body cap, under the file cap
        assert fits.status_code == 200, fits.text
        assert fits.json()["bytes"] > 2_000
        too_big = upload(200)  # ~40 kB: the route refuses it in the OpenAI error shape
        assert too_big.status_code == 413
        assert too_big.json()["error"]["param"] == "file"
        other = client.post("/v1/jobs", json={"input": "x" * 5_000}, headers=auth(key))
        assert other.status_code == 413  # every other path keeps the body cap


def test_the_last_admin_key_cannot_revoke_itself(isolated_env: dict[str, str]) -> None:
    """A fresh database holds one admin key: revoking it over HTTP would lock every operator
    out of key management, so it is a 409 until another admin key exists."""
    from llmq.api.app import create_app
    from llmq.settings import get_settings
    from llmq.store.engine import get_engine

    engine = get_engine(isolated_env["DATABASE_URL"])
    only = store.create_api_key(engine, "ops", admin=True)
    settings = get_settings().model_copy(
        update={
            "database_url": isolated_env["DATABASE_URL"],
            "redis_url": isolated_env["REDIS_URL"],
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        (row,) = http.get("/v1/admin/keys", headers=auth(only)).json()["data"]
        refused = http.delete(f"/v1/admin/keys/{row['id']}", headers=auth(only))
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "last_admin_key" and "last active admin key" in error["message"]
        assert http.get("/v1/admin/keys", headers=auth(only)).status_code == 200

        other = http.post(
            "/v1/admin/keys", json={"tenant": "ops", "admin": True}, headers=auth(only)
        )
        assert other.status_code == 201
        assert http.delete(f"/v1/admin/keys/{row['id']}", headers=auth(only)).status_code == 204
        last = other.json()
        refused_again = http.delete(f"/v1/admin/keys/{last['id']}", headers=auth(last["key"]))
        assert refused_again.status_code == 409


def _waiting_on_locks(engine: Any) -> int:
    # A connection of its own: pg_stat_activity is a snapshot per transaction.
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
        )


def test_two_concurrent_revokes_cannot_remove_the_last_two_admin_keys(
    isolated_env: dict[str, str],
) -> None:
    """One revoke of admin key A is in flight (uncommitted) while another revokes admin key B:
    B's revoke waits for A's outcome and then refuses, instead of counting A as still active."""
    import threading

    from llmq.store.engine import get_engine

    from ..helpers import wait_for

    engine = get_engine(isolated_env["DATABASE_URL"])
    for _ in range(2):
        store.create_api_key(engine, "ops", admin=True)
    a, b = (row["id"] for row in store.list_api_keys(engine))
    outcome: list[BaseException | uuid.UUID] = []

    def revoke_b() -> None:
        try:
            outcome.append(store.revoke_api_key(engine, str(b)))
        except store.LastAdminKey as exc:
            outcome.append(exc)

    with engine.connect() as first:
        first.execute(text("UPDATE api_keys SET revoked_at = now() WHERE id = :a"), {"a": a})
        second = threading.Thread(target=revoke_b)
        second.start()
        wait_for(lambda: _waiting_on_locks(engine), 30, "the second revoke to wait for the first")
        first.commit()
    second.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], store.LastAdminKey)
    active = [r for r in store.list_api_keys(engine) if r["revoked_at"] is None]
    assert [r["id"] for r in active] == [b]

"""The API's contract at the edge: auth, 422s that say what is wrong, tenant isolation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..helpers import auth


def test_missing_and_invalid_keys_get_401(http: Any) -> None:
    missing = http.post("/v1/jobs", json={"input": "hello"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = http.get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth("llmq_not-a-real-key")
    )
    assert wrong.status_code == 401
    assert "invalid" in wrong.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "body.input"),
        ({"input": ""}, "body.input"),
        ({"input": "x", "priority": "urgent"}, "body.priority"),
        ({"input": "x", "surprise": 1}, "body.surprise"),
        ({"input": "x", "chain": ["gpt-4o"]}, "body.chain"),
        ({"input": "x", "chain": ["nope:model"]}, "body.chain"),
        ({"input": "x", "chain": []}, "body.chain"),
        ({"input": "x", "params": {"max_tokens": 0}}, "body.params.max_tokens"),
        ({"input": "x", "params": {"semantic_cache": 0}}, "body.params.semantic_cache"),
        ({"input": "x", "params": {"semantic_cache": 1.5}}, "body.params.semantic_cache"),
        ({"input": 42}, "body.input"),
    ],
)
def test_bad_job_bodies_get_422_naming_the_field(
    http: Any, new_key: Any, body: dict[str, Any], where: str
) -> None:
    response = http.post("/v1/jobs", json=body, headers=auth(new_key()))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(where)
    assert any(d["loc"] == where for d in error["details"])


def test_unknown_template_and_style_get_422(http: Any, new_key: Any) -> None:
    key = new_key()
    template = http.post(
        "/v1/jobs", json={"input": "x", "template": "translate"}, headers=auth(key)
    )
    assert template.status_code == 422
    assert "unknown template 'translate'" in template.json()["error"]["message"]
    style = http.post(
        "/v1/jobs", json={"input": "x", "params": {"style": "haiku"}}, headers=auth(key)
    )
    assert style.status_code == 422
    assert "unknown style 'haiku'" in style.json()["error"]["message"]


def test_malformed_json_gets_422_not_500(http: Any, new_key: Any) -> None:
    response = http.post(
        "/v1/batches",
        content=b'{"items": [',
        headers={**auth(new_key()), "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_bad_batches_get_422_and_write_nothing(http: Any, new_key: Any, engine: Any) -> None:
    from sqlalchemy import text

    key = new_key()
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    empty = http.post("/v1/batches", json={"items": []}, headers=auth(key))
    assert empty.status_code == 422
    dup = http.post(
        "/v1/batches",
        json={"items": [{"custom_id": "a", "input": "one"}, {"custom_id": "a", "input": "two"}]},
        headers=auth(key),
    )
    assert dup.status_code == 422
    assert "duplicate" in dup.json()["error"]["message"]
    one_bad = http.post(
        "/v1/batches",
        json={"items": [{"custom_id": "a", "input": "fine"}, {"custom_id": "b", "input": ""}]},
        headers=auth(key),
    )
    assert one_bad.status_code == 422
    assert one_bad.json()["error"]["message"].startswith("body.items.1.input")
    with engine.connect() as conn:
        after = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    assert after == before


def test_other_tenants_jobs_and_batches_are_404(http: Any, new_key: Any) -> None:
    owner, stranger = new_key(), new_key()
    job = http.post("/v1/jobs", json={"input": "a private document"}, headers=auth(owner))
    batch = http.post("/v1/batches", json={"items": [{"input": "private"}]}, headers=auth(owner))
    assert job.status_code == batch.status_code == 202
    job_id, batch_id = job.json()["id"], batch.json()["id"]
    assert http.get(f"/v1/jobs/{job_id}", headers=auth(owner)).status_code == 200
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/batches/{batch_id}",
        f"/v1/batches/{batch_id}/results",
    ):
        response = http.get(path, headers=auth(stranger))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert http.get("/v1/jobs/not-a-uuid", headers=auth(owner)).status_code == 404


def _nested(depth: int) -> Any:
    """JSON of exactly `depth` levels: a dict holding lists."""
    value: Any = []
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", '{"input": "x", "metadata": {"a": %s}}'),
        ("/v1/batches", '{"items": [{"input": "x", "metadata": {"a": %s}}]}'),
        ("/openai/v1/chat/completions", '{"model": "m", "messages": %s}'),
    ],
)
def test_json_nested_too_deep_says_so_with_the_limit(
    http: Any, new_key: Any, path: str, body: str
) -> None:
    deep = "[" * 1000 + "]" * 1000
    response = http.post(
        path,
        content=(body % deep).encode(),
        headers={**auth(new_key()), "content-type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text
    assert "JSON nested too deep (at most 200 levels)" in response.text


def test_free_form_json_is_held_to_the_stated_depth(http: Any, new_key: Any) -> None:
    key = new_key()
    at_limit = http.post(
        "/v1/jobs", json={"input": "x", "metadata": _nested(200)}, headers=auth(key)
    )
    assert at_limit.status_code == 202, at_limit.text
    past = http.post("/v1/jobs", json={"input": "x", "metadata": _nested(201)}, headers=auth(key))
    assert past.status_code == 422
    assert "JSON nested too deep (at most 200 levels)" in past.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/jobs", {"input": "x", "custom_id": "c" * 201}, "body.custom_id"),
        (
            "/v1/batches",
            {"items": [{"input": "x", "custom_id": "c" * 201}]},
            "body.items.0.custom_id",
        ),
    ],
)
def test_a_long_custom_id_is_counted_in_characters(
    http: Any, new_key: Any, path: str, body: dict[str, Any], where: str
) -> None:
    response = http.post(path, json=body, headers=auth(new_key()))
    assert response.status_code == 422
    assert (
        response.json()["error"]["message"] == f"{where}: String should have at most 200 characters"
    )


def test_jsonl_errors_name_the_file_line(http: Any, new_key: Any) -> None:
    key = new_key()
    rows = [{"custom_id": c, "input": "x"} for c in ("a", "b", "c", "a")]
    duplicate = http.post(
        "/v1/batches",
        files={"file": ("b.jsonl", "".join(json.dumps(r) + "\n" for r in rows))},
        headers=auth(key),
    )
    assert duplicate.status_code == 422
    error = duplicate.json()["error"]
    assert error["code"] == "invalid_jsonl"
    assert error["message"] == "line 4: custom_id: 'a' is a duplicate of line 1"

    broken = '{"input": "x"}\n' * 4 + '{"input": \n'
    response = http.post("/v1/batches", files={"file": ("b.jsonl", broken)}, headers=auth(key))
    assert response.status_code == 422
    assert (
        response.json()["error"]["message"]
        == "line 5: Invalid JSON: EOF while parsing a value at column 10"
    )


def test_the_openapi_schema_says_what_the_server_enforces(http: Any) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]

    def param(path: str, name: str) -> dict[str, Any]:
        found = next(p for p in paths[path]["get"]["parameters"] if p["name"] == name)
        schema: dict[str, Any] = found["schema"]["anyOf"][0]
        return schema

    openai_limit = param("/openai/v1/batches", "limit")
    assert (openai_limit["minimum"], openai_limit["maximum"]) == (1, 100)
    anthropic_limit = param("/anthropic/v1/messages/batches", "limit")
    assert (anthropic_limit["minimum"], anthropic_limit["maximum"]) == (1, 1000)
    assert param("/openai/v1/batches", "after")["pattern"] == "^batch_[0-9a-fA-F]{32}$"
    chain = doc["components"]["schemas"]["JobIn"]["properties"]["chain"]["anyOf"][0]
    assert chain["minItems"] == 1 and chain["maxItems"] == 10
    batch = paths["/v1/batches"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchIn"}
    assert doc["components"]["schemas"]["BatchIn"]["required"] == ["items"]
    assert batch["multipart/form-data"]["schema"]["additionalProperties"] is False
    for path in ("/openai/v1/chat/completions", "/anthropic/v1/messages/batches"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is False, path


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/admin/keys", "GET, POST"),
        ("PUT", "/v1/jobs/00000000-0000-0000-0000-000000000000", "GET"),
        ("PUT", "/openai/v1/batches", "GET, POST"),
        ("PUT", "/openai/v1/chat/completions", "POST"),
        ("PATCH", "/anthropic/v1/messages/batches/msgbatch_x", "DELETE, GET"),
    ],
)
def test_an_undeclared_method_is_405_listing_every_method_of_the_path(
    http: Any, new_key: Any, method: str, path: str, allow: str
) -> None:
    response = http.request(method, path, headers=auth(new_key()))
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow


def test_an_unknown_compat_path_is_still_404(http: Any, new_key: Any) -> None:
    response = http.put("/openai/v1/nothing-here", headers=auth(new_key()))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (/openai/v1/nothing-here)"


def test_integral_numbers_count_as_integers_as_json_schema_says(http: Any, new_key: Any) -> None:
    """JSON has one number type; 5.0 is an integer to JSON Schema (and so to the fuzzer)."""
    key = new_key()
    body = {"input": "x", "template_version": 1.0, "params": {"max_tokens": 5.0}}
    assert http.post("/v1/jobs", json=body, headers=auth(key)).status_code == 202
    fraction = http.post("/v1/jobs", json={"input": "x", "params": {"max_tokens": 5.5}},
                         headers=auth(key))  # fmt: skip
    assert fraction.status_code == 422


def test_usage_with_only_to_reports_the_month_it_falls_in(http: Any, new_key: Any) -> None:
    response = http.get("/v1/usage", params={"to": "2000-01-01T00:00:00Z"}, headers=auth(new_key()))
    assert response.status_code == 200, response.text
    assert response.json()["from"].startswith("1999-12-01T00:00:00")

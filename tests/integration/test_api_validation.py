"""The API's contract at the edge: auth, 422s that say what is wrong, tenant isolation."""

from __future__ import annotations

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

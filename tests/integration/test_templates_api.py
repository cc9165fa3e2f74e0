"""Templates through the API: 422s at submission, A/B assignment stored per job and reported."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text

from llmq import store
from llmq.config_check import ConfigError
from llmq.settings import Settings
from llmq.templates import Experiment, choose_version, get_family

from ..helpers import auth, wait_for


@pytest.mark.parametrize(
    "body, message",
    [
        ({"template": "nope"}, "unknown template 'nope'"),
        ({"template": "summarize_section"}, "unknown template 'summarize_section'"),
        ({"template_version": 7}, "has no version 7"),
        ({"params": {"variables": {"tone": "dry"}}}, "has no variable 'tone'"),
        ({"template": "summarize_for_question"}, "needs variable 'question'"),
        ({"template_version": 2, "params": {"variables": {"x": "1"}}}, "has no variable 'x'"),
    ],
)
def test_bad_templates_are_422_before_anything_is_written(
    http: Any, new_key: Any, engine: Engine, body: dict[str, Any], message: str
) -> None:
    key = new_key()
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    job = http.post("/v1/jobs", json={"input": "Some text.", **body}, headers=auth(key))
    batch = http.post(
        "/v1/batches", json={"items": [{"input": "Some text."}], **body}, headers=auth(key)
    )
    for response in (job, batch):
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "invalid_template"
        assert message in error["message"]
    with engine.connect() as conn:
        written = conn.execute(
            text("SELECT count(*) FROM jobs WHERE tenant_id = :t"), {"t": tenant.tenant_id}
        ).scalar_one()
    assert written == 0


def test_a_variable_of_one_item_is_checked_too(http: Any, new_key: Any) -> None:
    items = [
        {"input": "a", "params": {"variables": {"question": "why?"}}},
        {"input": "b", "params": {"variables": {"question": "how?", "extra": "1"}}},
    ]
    response = http.post(
        "/v1/batches",
        json={"items": items, "template": "summarize_for_question"},
        headers=auth(new_key()),
    )
    assert response.status_code == 422
    assert "no variable 'extra'" in response.json()["error"]["message"]


def test_an_experiment_naming_an_unknown_version_stops_the_api_at_start() -> None:
    from llmq.api.app import create_app

    unknown = Settings(template_experiments={"summarize": {"version": 9, "percent": 10}})
    with pytest.raises(ConfigError, match="no version 9"):
        create_app(unknown)
    with pytest.raises(ValidationError, match="percent"):
        Settings(template_experiments={"summarize": {"version": 2, "percent": 150}})


@pytest.fixture()
def ab_http(stack_env: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from llmq.api.app import create_app

    settings = Settings(template_experiments={"summarize": {"version": 2, "percent": 40}})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _versions(engine: Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT custom_id, template_version FROM jobs WHERE batch_id = :b"),
            {"b": batch_id},
        ).all()
    return {r[0]: r[1] for r in rows}


def test_ab_assignment_is_stored_per_job_stable_and_reported(
    ab_http: Any, new_key: Any, engine: Engine, worker: Any
) -> None:
    key = new_key()
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    items = [
        {"custom_id": f"doc-{i}", "input": f"Report {i}. The plant opens in May. Costs rose."}
        for i in range(300)
    ]
    body = {"items": items, "chain": ["local:extractive"]}
    first = ab_http.post("/v1/batches", json=body, headers=auth(key)).json()["id"]
    second = ab_http.post("/v1/batches", json=body, headers=auth(key)).json()["id"]

    versions = _versions(engine, first)
    assert versions == _versions(engine, second)  # same tenant + custom_id -> same version
    family, split = get_family("summarize"), Experiment(version=2, percent=40)
    assert versions == {
        f"doc-{i}": choose_version(
            family, pinned=None, tenant=str(tenant.tenant_id), unit=f"doc-{i}", experiment=split
        )
        for i in range(300)
    }
    assert 0.3 < list(versions.values()).count(2) / 300 < 0.5

    pinned = ab_http.post("/v1/batches", json={**body, "template_version": 1}, headers=auth(key))
    assert set(_versions(engine, pinned.json()["id"]).values()) == {1}

    def finished() -> list[dict[str, Any]] | None:
        batch = ab_http.get(f"/v1/batches/{first}", headers=auth(key)).json()
        if batch["status"] != "completed":
            return None
        lines = ab_http.get(f"/v1/batches/{first}/results", headers=auth(key)).text
        return [json.loads(line) for line in lines.splitlines()]

    rows = wait_for(finished, 120, "the A/B batch to finish")
    assert all(r["status"] == "succeeded" for r in rows)
    assert {r["custom_id"]: r["template_version"] for r in rows} == versions
    job = ab_http.get(f"/v1/jobs/{rows[0]['job_id']}", headers=auth(key)).json()
    assert job["template_version"] == versions[rows[0]["custom_id"]]

    # Usage grouped by version: two A/B batches and one pinned to version 1.
    usage = ab_http.get("/v1/usage/templates", headers=auth(key)).json()["data"]
    arms = {(u["template"], u["template_version"]): u["jobs"] for u in usage}
    on_two = list(versions.values()).count(2)
    assert arms == {("summarize", 1): 900 - 2 * on_two, ("summarize", 2): 2 * on_two}


def test_a_job_runs_with_its_version_and_variables(
    http: Any, new_key: Any, worker: Any, fake_provider: Any
) -> None:
    from llmq.testing.fake_provider import FakeScript

    fake_provider.set_script(FakeScript())
    key = new_key()
    accepted = http.post(
        "/v1/jobs",
        json={
            "input": "The ferry terminal opens in May and costs 40 million euros.",
            "template": "summarize_for_question",
            "params": {"variables": {"question": "When does it open?"}},
            "chain": ["openai:gpt-4o-mini"],
        },
        headers=auth(key),
    )
    assert accepted.status_code == 202

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(
            f"/v1/jobs/{accepted.json()['id']}", headers=auth(key)
        ).json()
        return job if job["status"] == "succeeded" else None

    job = wait_for(done, 60, "the templated job")
    assert (job["template"], job["template_version"]) == ("summarize_for_question", 1)
    # The fake provider echoes the start of the user prompt: the question was rendered in.
    assert job["result"].startswith("[fake:gpt-4o-mini] Question: When does it open?")

"""Size-based routing through the API and the shared worker, against the fake provider: a short
input is answered by the template's cheaper model (priced from the pricing table), a long one
by the normal chain, a job that named its chain keeps it, bad routes are 422s, and the budget
check at submission prices a short input at the cheaper model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.settings import Settings

from ..helpers import auth, wait_for

NANO = "openai:gpt-5-nano"
THRESHOLD = 40
TERMINAL = {"succeeded", "failed", "blocked", "cancelled"}


@pytest.fixture(scope="module")
def routed_http(stack_env: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from llmq.api.app import create_app

    settings = Settings(
        template_short_input={"prompt": {"link": NANO, "max_input_tokens": THRESHOLD}}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _short() -> str:
    return f"Name the capital of {uuid.uuid4().hex[:8]}."  # about 8 tokens


def _long() -> str:
    return f"Case {uuid.uuid4().hex[:8]}. " + " ".join(f"word{i}" for i in range(60))


def _finished(http: Any, key: str, job_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return job if job["status"] in TERMINAL else None

    return wait_for(probe, 60, f"job {job_id}")


def _submit(http: Any, key: str, body: dict[str, Any]) -> str:
    response = http.post("/v1/jobs", json={"template": "prompt", **body}, headers=auth(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_short_inputs_go_to_the_cheaper_model_and_long_ones_to_the_chain(
    routed_http: Any, new_key: Any, worker: Any
) -> None:
    key = new_key()
    prices = load_price_table()
    short = _finished(routed_http, key, _submit(routed_http, key, {"input": _short()}))
    assert short["status"] == "succeeded"
    assert (short["provider"], short["model"]) == ("openai", "gpt-5-nano")
    (attempt,) = short["attempts"]
    assert (attempt["provider"], attempt["model"]) == ("openai", "gpt-5-nano")
    expected = prices.cost(
        NANO, attempt["input_tokens"], attempt["output_tokens"], attempt["cached_tokens"]
    )
    assert expected is not None and expected > 0
    assert Decimal(attempt["cost_usd"]) == expected == Decimal(short["cost_usd"])
    # The route says why a cheaper model answered.
    note = short["route"][0]
    assert note["routed"] == "short_input" and note["link"] == NANO
    assert note["input_tokens"] <= note["max_input_tokens"] == THRESHOLD
    assert short["route"][1:] == [{"link": NANO, "result": "ok"}]

    long = _finished(routed_http, key, _submit(routed_http, key, {"input": _long()}))
    assert (long["status"], long["model"]) == ("succeeded", "gpt-4o-mini")
    assert [a["model"] for a in long["attempts"]] == ["gpt-4o-mini"]
    assert not any("routed" in step for step in long["route"])


def test_a_job_that_names_its_chain_keeps_it_unless_it_names_a_route_too(
    routed_http: Any, new_key: Any, worker: Any
) -> None:
    key = new_key()
    haiku = ["anthropic:claude-haiku-4-5"]
    named = _finished(routed_http, key, _submit(routed_http, key, {"input": _short(),
                                                                   "chain": haiku}))  # fmt: skip
    assert (named["provider"], named["model"]) == ("anthropic", "claude-haiku-4-5")
    assert not any("routed" in step for step in named["route"])

    own_route = {"link": "openai:gpt-4.1-nano", "max_input_tokens": 100}
    both = _submit(
        routed_http, key, {"input": _short(), "chain": haiku, "params": {"short_input": own_route}}
    )
    job = _finished(routed_http, key, both)
    assert job["model"] == "gpt-4.1-nano" and job["route"][0]["routed"] == "short_input"


def test_a_batch_routes_each_item_by_its_own_size(
    routed_http: Any, new_key: Any, engine: Engine, worker: Any
) -> None:
    key = new_key()
    items = [{"custom_id": "s", "input": _short()}, {"custom_id": "l", "input": _long()}]
    response = routed_http.post(
        "/v1/batches", json={"items": items, "template": "prompt"}, headers=auth(key)
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    def models() -> dict[str, str] | None:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT custom_id, status, model FROM jobs WHERE batch_id = :b"),
                {"b": batch_id},
            ).all()
        done = all(r.status in TERMINAL for r in rows)
        return {r.custom_id: r.model for r in rows} if done else None

    assert wait_for(models, 60, "the batch") == {"s": "gpt-5-nano", "l": "gpt-4o-mini"}


@pytest.mark.parametrize(
    "route, message",
    [
        ({"link": "acme:tiny", "max_input_tokens": 10}, "unknown provider 'acme'"),
        ({"link": "gpt-5-nano", "max_input_tokens": 10}, "must look like 'provider:model'"),
        ({"link": NANO, "max_input_tokens": 0}, "greater than or equal to 1"),
        ({"link": NANO, "max_input_tokens": -5}, "greater than or equal to 1"),
        ({"link": NANO}, "Field required"),
        ({"link": NANO, "max_input_tokens": "10"}, "valid integer"),
    ],
)
def test_a_bad_route_in_a_request_is_a_422_and_nothing_is_written(
    http: Any, new_key: Any, engine: Engine, route: dict[str, Any], message: str
) -> None:
    key = new_key()
    tenant = store.authenticate(engine, key)
    assert tenant is not None
    params = {"short_input": route}
    job = http.post("/v1/jobs", json={"input": "hi", "params": params}, headers=auth(key))
    batch = http.post(
        "/v1/batches", json={"items": [{"input": "hi", "params": params}]}, headers=auth(key)
    )
    for response in (job, batch):
        assert response.status_code == 422, response.text
        assert message in response.text
        assert "short_input" in response.text  # the error names the field
    with engine.connect() as conn:
        written = conn.execute(
            text("SELECT count(*) FROM jobs WHERE tenant_id = :t"), {"t": tenant.tenant_id}
        ).scalar_one()
    assert written == 0


def test_the_budget_check_prices_a_short_input_at_the_cheaper_model(
    routed_http: Any, engine: Engine
) -> None:
    tenant = f"route-budget-{uuid.uuid4().hex[:8]}"
    key = store.create_api_key(engine, tenant)
    # 1000 output tokens: about $0.0004 at gpt-5-nano, $0.0006 at gpt-4o-mini.
    store.set_budget(engine, tenant, Decimal("0.0005"), None)
    params = {"max_tokens": 1000}
    long = routed_http.post(
        "/v1/jobs", json={"template": "prompt", "input": _long(), "params": params},
        headers=auth(key),
    )  # fmt: skip
    assert long.status_code == 402, long.text
    assert long.json()["error"]["details"][0]["link"] == "openai:gpt-4o-mini"
    named = routed_http.post(
        "/v1/jobs",
        json={"template": "prompt", "input": _short(), "params": params,
              "chain": ["openai:gpt-4o-mini"]},
        headers=auth(key),
    )  # fmt: skip
    assert named.status_code == 402, named.text  # a named chain is not re-routed
    short = routed_http.post(
        "/v1/jobs", json={"template": "prompt", "input": _short(), "params": params},
        headers=auth(key),
    )  # fmt: skip
    assert short.status_code == 202, short.text

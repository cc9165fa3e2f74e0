"""Fuzz the API against its own OpenAPI schema (schemathesis): for a bounded number of generated
requests per operation, schema-valid and schema-invalid, there is never a 5xx, every status code,
content type and body is the documented one, and invalid input is refused. Well under a minute.

Operations are read from the live app's schema inside the test (schemathesis' lazy pytest
loader does not run under pytest 9), so a new endpoint is fuzzed without touching this file.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks

from llmq import repository

from ..helpers import wait_for

EXAMPLES_PER_OPERATION = 20
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_headers(engine: Any) -> dict[str, str]:
    # An admin key (so key management is fuzzed too) without rate limits (0 = unlimited), so
    # every generated request reaches the handlers instead of stopping at a 429.
    key = repository.create_api_key(
        engine, f"fuzz-{uuid.uuid4().hex[:6]}", admin=True, requests_per_min=0, items_per_min=0
    )
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_fails_and_always_matches_its_schema(
    app: Any, fuzz_headers: dict[str, str], mode: GenerationMode, worker: Any
) -> None:
    # `worker`: /readyz answers 503 (correctly) until a worker's heartbeat is in Redis.
    with TestClient(app) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, "a live worker")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6  # jobs, batches, results, health, keys: the schema was read
    strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations])

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION * len(operations),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,  # the same bounded run every time, not one that grows with a local cache
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=fuzz_headers, checks=CHECKS)

    fuzz()

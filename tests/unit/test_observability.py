"""Pure parts of observability: log formatting and masking, request ids, fallback counting."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmq.api.observability import request_id_from
from llmq.settings import Settings
from llmq.store import ClaimedJob, Outcome
from llmq.telemetry import hooks, logs


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("llmq.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_bound_context_and_extras() -> None:
    formatter = logs.JsonFormatter("api")
    with logs.bound(request_id="r-1", job_id=None), logs.bound(tenant="t-1"):
        line = json.loads(formatter.format(_record("hello", provider="openai", attempt=2)))
    assert line["msg"] == "hello" and line["service"] == "api" and line["level"] == "info"
    assert (line["request_id"], line["tenant"], line["provider"], line["attempt"]) == (
        "r-1", "t-1", "openai", 2,
    )  # fmt: skip
    assert "job_id" not in line  # None values are not bound
    outside = json.loads(formatter.format(_record("bye")))
    assert "request_id" not in outside and "tenant" not in outside


def test_secrets_are_masked_wherever_they_appear() -> None:
    provider_key = f"prov-{uuid.uuid4().hex}"
    logs.configure(Settings(openai_api_key=SecretStr(provider_key)), "test")
    api_key = "llmq_" + "A1b2C3d4E5f6G7h8I9j0K1l2"
    message = f"Authorization: Bearer {api_key} key={provider_key} other=sk-proj-abcdef123456"
    masked = logs.scrub(message)
    for secret in (api_key, provider_key, "sk-proj-abcdef123456"):
        assert secret not in masked
    assert masked.startswith("Authorization: Bearer [redacted]")
    line = logs.JsonFormatter("api").format(_record(message))
    assert provider_key not in line and api_key not in line
    # The SDKs log whole request bodies at DEBUG: their loggers are held at WARNING.
    assert logging.getLogger("openai").getEffectiveLevel() == logging.WARNING


def test_request_ids_are_kept_when_plain_and_made_otherwise() -> None:
    assert request_id_from([(b"x-request-id", b"abc-123:xyz")]) == "abc-123:xyz"
    for bad in (b"has space", b"x" * 129, b"", "caf\u00e9".encode("latin-1")):
        made = request_id_from([(b"x-request-id", bad)])
        assert made != bad.decode("latin-1") and len(made) == 32
    assert request_id_from([]) != request_id_from([])


def test_each_link_left_for_the_next_counts_as_one_fallback() -> None:
    link = f"openai:unit-{uuid.uuid4().hex[:6]}"
    job = ClaimedJob(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), batch_id=None, template="summarize",
        template_version=1, input="x", params={}, chain=[link, "local:extractive"],
        attempts_made=0, deliveries=1, created_at=datetime.now(UTC), age_s=0.0,
        cancel_requested=False,
    )  # fmt: skip
    route = [
        {"link": "anthropic:claude-haiku-4-5", "skipped": "not_configured"},
        {"link": link, "result": "server_error", "tries": 3},
        {"link": "local:extractive", "result": "ok"},
    ]
    with hooks.job(job) as watch:
        watch.result = Outcome(status="succeeded", route=route)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    assert sample("llmq_fallbacks_total", link=link, reason="server_error") == 1
    assert sample("llmq_fallbacks_total", link="local:extractive", reason="ok") == 0
    assert sample("llmq_jobs_finished_total", status="succeeded", tenant=str(job.tenant_id)) == 1

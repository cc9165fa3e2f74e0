"""The providers' Batch APIs: llmq's batch clients, through the REAL openai and anthropic SDKs,
against the fake provider's batch endpoints (127.0.0.1 only; time moves by the fake's clock,
never by a sleep)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from pydantic import SecretStr

from llmq.providers.anthropic_provider import AnthropicProvider
from llmq.providers.base import CompletionRequest, ProviderError
from llmq.providers.batch_api import (
    BatchApiUnavailable,
    BatchClient,
    BatchLookupPending,
    BatchRequest,
    ItemResult,
    batch_client_for,
)
from llmq.providers.openai_provider import OpenAIProvider
from llmq.settings import Settings
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

pytestmark = pytest.mark.timeout(60)

PROVIDERS = ("openai", "anthropic")
MODEL = "batch-model-1"


@pytest.fixture(scope="module", autouse=True)
def _stack() -> None:
    """Overrides the package's autouse stack: these tests need no Postgres, Redis or worker."""


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeProviderServer) -> None:
    server.set_script(FakeScript())
    server.script_batches(reset=True, turnaround_s=100.0)
    server.reset()


def _settings(server: FakeProviderServer) -> Settings:
    return Settings(
        openai_api_key=SecretStr("sk-fake"),
        openai_base_url=server.openai_base_url,
        anthropic_api_key=SecretStr("sk-ant-fake"),
        anthropic_base_url=server.anthropic_base_url,
        provider_read_timeout_s=5.0,
    )


def _client(server: FakeProviderServer, provider: str) -> BatchClient:
    return batch_client_for(provider, _settings(server))


def _requests(prefix: str, count: int) -> list[BatchRequest]:
    return [
        BatchRequest(
            custom_id=f"{prefix}-{i}",
            model=MODEL,
            messages=[
                {"role": "system", "content": "Summarize in one line."},
                {"role": "user", "content": f"Quarterly report number {i} says revenue grew."},
            ],
            max_tokens=64,
        )
        for i in range(count)
    ]


def _results(client: BatchClient, upstream_id: str, ids: list[str]) -> dict[str, ItemResult]:
    found = {r.custom_id: r for r in client.results(upstream_id, custom_ids=ids)}
    assert set(found) == set(ids)
    return found


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_runs_to_the_end_and_answers_each_item_as_the_sync_endpoint(
    server: FakeProviderServer, provider: str
) -> None:
    client = _client(server, provider)
    requests = _requests(f"sync-{provider}", 3)
    upstream_id = client.submit(requests, intent_id=f"intent-{provider}-1")

    assert client.retrieve(upstream_id).state == "in_progress"
    with pytest.raises(ValueError, match="results exist once it ends"):
        list(client.results(upstream_id))
    server.advance_batches(100.0)
    batch = client.retrieve(upstream_id)
    assert (batch.state, batch.error) == ("ended", None)

    results = _results(client, upstream_id, [r.custom_id for r in requests])
    settings = _settings(server)
    sync = (
        OpenAIProvider("sk-fake", settings.openai_base_url, connect_timeout_s=5, read_timeout_s=5)
        if provider == "openai"
        else AnthropicProvider(
            "sk-ant-fake", settings.anthropic_base_url, connect_timeout_s=5, read_timeout_s=5
        )
    )
    for request in requests:
        got = results[request.custom_id]
        expected = sync.complete(
            CompletionRequest(
                model=MODEL,
                user=request.messages[1]["content"],
                system=request.messages[0]["content"],
                max_tokens=request.max_tokens,
            )
        )
        assert got.outcome == "succeeded"
        assert (got.text, got.input_tokens, got.output_tokens, got.finish_reason) == (
            expected.text,
            expected.usage.input_tokens,
            expected.usage.output_tokens,
            expected.finish_reason,
        )
    # The system turn reached the provider as Anthropic's `system` / OpenAI's system message.
    sent = server.requests(MODEL)[0]
    if provider == "anthropic":
        assert sent["system"] == "Summarize in one line."
        assert [m["role"] for m in sent["messages"]] == ["user"]
    else:
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    stats = server.stats()
    assert stats["batches_created"][provider] == 1
    assert stats["batch_items"][provider] == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_scripted_item_errors_and_expiry_come_back_per_item(
    server: FakeProviderServer, provider: str
) -> None:
    requests = _requests(f"items-{provider}", 4)
    ids = [r.custom_id for r in requests]
    server.script_batches(errored_ids=[ids[1]], expired_ids=[ids[2]], turnaround_s=1.0)
    # A sync fault rule errors an item the way the sync endpoint would answer it.
    server.set_script(
        FakeScript(rules=[FaultRule(fault="status", status=400, prompt_contains="number 3")])
    )
    client = _client(server, provider)
    upstream_id = client.submit(requests, intent_id=f"intent-items-{provider}")
    server.advance_batches(1.0)
    assert client.retrieve(upstream_id).state == "ended"

    results = _results(client, upstream_id, ids)
    assert [results[i].outcome for i in ids] == ["succeeded", "errored", "expired", "errored"]
    assert results[ids[0]].text and results[ids[0]].output_tokens > 0
    assert "Scripted item error" in str(results[ids[1]].error)
    assert "invalid_request_error" in str(results[ids[3]].error)
    for custom_id in ids[1:]:
        assert (results[custom_id].text, results[custom_id].input_tokens) == (None, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_whole_batch_that_fails_reports_every_item_errored(
    server: FakeProviderServer, provider: str
) -> None:
    server.script_batches(fail_next=1)
    client = _client(server, provider)
    requests = _requests(f"fail-{provider}", 2)
    ids = [r.custom_id for r in requests]
    failed_id = client.submit(requests, intent_id=f"intent-fail-{provider}")

    batch = client.retrieve(failed_id)
    if provider == "openai":
        assert (batch.state, batch.raw_status) == ("failed", "failed")
        assert batch.error and "batch_failed" in batch.error
    else:  # Anthropic has no failed state: the batch ends with every item errored.
        assert batch.state == "ended"
    results = _results(client, failed_id, ids)
    assert {r.outcome for r in results.values()} == {"errored"}
    # Only the next batch fails.
    assert client.retrieve(client.submit(requests, intent_id="again")).state == "in_progress"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expired_batch_reports_its_items_expired(
    server: FakeProviderServer, provider: str
) -> None:
    server.script_batches(expire_next=1)
    client = _client(server, provider)
    requests = _requests(f"expire-{provider}", 3)
    ids = [r.custom_id for r in requests]
    upstream_id = client.submit(requests, intent_id=f"intent-expire-{provider}")
    server.advance_batches(100.0)

    batch = client.retrieve(upstream_id)
    assert batch.state == "expired"
    assert batch.error and "expired" in batch.error
    results = _results(client, upstream_id, ids)
    assert {r.outcome for r in results.values()} == {"expired"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cancel_keeps_the_results_produced_before_it(
    server: FakeProviderServer, provider: str
) -> None:
    server.script_batches(cancel_s=30.0)
    client = _client(server, provider)
    requests = _requests(f"cancel-{provider}", 4)
    ids = [r.custom_id for r in requests]
    upstream_id = client.submit(requests, intent_id=f"intent-cancel-{provider}")
    server.advance_batches(60.0)  # items finish evenly over 100 s: two of four are done

    client.cancel(upstream_id)
    client.cancel(upstream_id)  # cancelling twice is harmless
    assert client.retrieve(upstream_id).state == "cancelling"
    with pytest.raises(ValueError, match="results exist once it ends"):
        list(client.results(upstream_id))
    server.advance_batches(30.0)
    batch = client.retrieve(upstream_id)
    assert batch.state == "cancelled"
    client.cancel(upstream_id)  # and so is cancelling an ended batch
    results = _results(client, upstream_id, ids)
    assert [results[i].outcome for i in ids] == [
        "succeeded",
        "succeeded",
        "cancelled",
        "cancelled",
    ]
    assert all(results[i].text and results[i].output_tokens > 0 for i in ids[:2])
    assert server.stats()["batches_cancelled"][provider] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_find_recovers_a_lost_upstream_id(server: FakeProviderServer, provider: str) -> None:
    client = _client(server, provider)
    requests = _requests(f"find-{provider}", 3)
    ids = [r.custom_id for r in requests]
    other = client.submit(_requests(f"other-{provider}", 2), intent_id="other-intent")
    lost = client.submit(requests, intent_id="lost-intent")

    if provider == "openai":
        assert client.find("lost-intent", ids) == lost
    else:
        # Anthropic shows custom ids only in results: while a batch of the same size is in
        # progress the answer is "not yet", never a guess that could pay twice.
        with pytest.raises(BatchLookupPending):
            client.find("lost-intent", ids)
        server.advance_batches(100.0)
        assert client.find("lost-intent", ids) == lost
    assert client.find("lost-intent", ids, known_ids={lost}) is None
    assert client.find("never-submitted", ["nobody-1", "nobody-2"]) is None
    assert other != lost
    assert server.stats()["batches_created"][provider] == 2


def test_stats_count_batches_per_api_and_reset(server: FakeProviderServer) -> None:
    openai_client, anthropic_client = (_client(server, p) for p in PROVIDERS)
    openai_client.submit(_requests("st-a", 2), intent_id="st-1")
    openai_client.submit(_requests("st-b", 1), intent_id="st-2")
    cancelled = anthropic_client.submit(_requests("st-c", 5), intent_id="st-3")
    anthropic_client.cancel(cancelled)

    stats = server.stats()
    assert stats["batches_created"] == {"openai": 2, "anthropic": 1}
    assert stats["batches_cancelled"] == {"openai": 0, "anthropic": 1}
    assert stats["batch_items"] == {"openai": 3, "anthropic": 5}
    assert stats["requests"] == 0  # batch items are not sync requests
    server.reset()
    stats = server.stats()
    assert stats["batches_created"] == stats["batches_cancelled"] == {"openai": 0, "anthropic": 0}


def test_an_invalid_input_file_fails_the_openai_batch_with_its_line(
    server: FakeProviderServer,
) -> None:
    sdk = openai.OpenAI(api_key="sk-fake", base_url=server.openai_base_url, max_retries=0)
    content = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    content += b"not json\n"
    file = sdk.files.create(file=("in.jsonl", content), purpose="batch")
    assert sdk.files.retrieve(file.id).bytes == len(content)
    assert sdk.files.content(file.id).content == content
    batch = sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    upstream = _client(server, "openai").retrieve(batch.id)
    assert upstream.state == "failed"
    assert upstream.error and "invalid_json_line" in upstream.error
    with pytest.raises(openai.BadRequestError):
        sdk.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(ProviderError) as lost:
        _client(server, "openai").retrieve("batch_missing")
    assert lost.value.status == 404


def test_the_batch_script_endpoint_merges_and_validates(server: FakeProviderServer) -> None:
    assert server.script_batches(fail_next=2).turnaround_s == 100.0  # unchanged fields stay
    response = httpx.post(f"{server.url}/_fake/batches/script", json={"fail_next": -1})
    assert response.status_code == 422
    response = httpx.post(f"{server.url}/_fake/batches/script", json={"bogus": 1})
    assert response.status_code == 422
    response = httpx.post(f"{server.url}/_fake/batches/script", content=b"not json")
    assert response.status_code == 422
    response = httpx.post(f"{server.url}/_fake/batches/advance", json={"seconds": -1})
    assert response.status_code == 422
    assert httpx.get(f"{server.url}/_fake/batches/script").json()["fail_next"] == 2
    reset = server.script_batches(reset=True, expire_next=1)
    assert (reset.fail_next, reset.expire_next, reset.turnaround_s) == (0, 1, 0.0)


def test_only_openai_and_anthropic_have_a_batch_client(server: FakeProviderServer) -> None:
    with pytest.raises(BatchApiUnavailable, match="no Batch API"):
        batch_client_for("local", _settings(server))
    with pytest.raises(BatchApiUnavailable, match="OPENAI_API_KEY"):
        batch_client_for("openai", Settings(openai_api_key=None))


def test_the_command_line_fake_provider_takes_a_batch_turnaround(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from llmq.cli.main import main; main()"]
    args = ["fake-provider", "--port", str(port), "--batch-turnaround-s", "7.5"]
    log = (tmp_path / "fake.log").open("w")
    process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        script = None
        while script is None:
            assert process.poll() is None, (tmp_path / "fake.log").read_text()
            assert time.monotonic() < deadline, "the fake provider did not serve in 30 s"
            try:
                script = httpx.get(f"http://127.0.0.1:{port}/_fake/batches/script").json()
            except httpx.TransportError:
                # Waiting on the process doubles as the poll interval.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.1)
        assert script["turnaround_s"] == 7.5
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_lists_are_newest_first_and_page_through_the_sdks(server: FakeProviderServer) -> None:
    settings = _settings(server)
    openai_client, anthropic_client = (_client(server, p) for p in PROVIDERS)
    made = {
        "openai": [
            openai_client.submit(_requests(f"pg-o{i}", 1), intent_id=f"pg{i}") for i in range(5)
        ],
        "anthropic": [
            anthropic_client.submit(_requests(f"pg-a{i}", 1), intent_id="pg") for i in range(5)
        ],
    }
    sdk = openai.OpenAI(api_key="k", base_url=settings.openai_base_url, max_retries=0)
    listed = [b.id for b in sdk.batches.list(limit=2)]
    assert listed[:5] == made["openai"][::-1]
    assert len(listed) == len(set(listed))
    ant = anthropic.Anthropic(api_key="k", base_url=settings.anthropic_base_url, max_retries=0)
    listed = [b.id for b in ant.messages.batches.list(limit=2)]
    assert listed[:5] == made["anthropic"][::-1]
    assert len(listed) == len(set(listed))
    with pytest.raises(openai.BadRequestError):
        sdk.batches.list(limit=101)


def test_an_unreachable_provider_is_a_retryable_provider_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        openai_api_key=SecretStr("sk-fake"),
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        anthropic_api_key=SecretStr("sk-ant-fake"),
        anthropic_base_url=f"http://127.0.0.1:{port}",
        provider_connect_timeout_s=2.0,
    )
    for provider in PROVIDERS:
        with pytest.raises(ProviderError) as failed:
            batch_client_for(provider, settings).submit(_requests("down", 1), intent_id="down")
        assert (failed.value.code, failed.value.retryable) == ("connection_error", True)

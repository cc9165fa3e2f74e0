"""The official `anthropic` SDK, pointed at llmq's /anthropic, runs Message Batches unchanged:
the SDK parsing our responses (and raising its typed errors) is the test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch

from llmq.testing.fake_provider import FakeScript

from ..helpers import auth, database_text, luhn_card, wait_for
from ..live_api import serve

TEXT = "The ferry timetable changes on Sunday: the first boat leaves at 6:40."


@pytest.fixture(scope="module")
def root(app: Any) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture()
def client_for(root: str) -> Callable[[str], anthropic.Anthropic]:
    def make(key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"{root}/anthropic", api_key=key, max_retries=0, timeout=30
        )

    return make


def _request(custom_id: str, model: str = "claude-haiku-4-5", **params: Any) -> dict[str, Any]:
    body = {"model": model, "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": f"{TEXT} ({custom_id})"}]}  # fmt: skip
    body.update(params)
    return {"custom_id": custom_id, "params": {k: v for k, v in body.items() if v is not None}}


def _wait_ended(client: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    def ended() -> MessageBatch | None:
        batch = client.messages.batches.retrieve(batch_id)
        return batch if batch.processing_status == "ended" else None

    return wait_for(ended, 60, f"batch {batch_id} to end")


def test_create_poll_and_read_results(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any, http: Any
) -> None:
    fake_provider.set_script(FakeScript())
    key = new_key()
    client = client_for(key)
    batch = client.messages.batches.create(requests=[_request(f"q{i}") for i in range(5)])
    assert batch.type == "message_batch" and batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.expires_at > batch.created_at

    done = _wait_ended(client, batch.id)
    counts = done.request_counts
    assert (counts.succeeded, counts.errored, counts.processing, counts.canceled) == (5, 0, 0, 0)
    assert done.ended_at is not None and done.results_url is not None

    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == [f"q{i}" for i in range(5)]
    for line in results:
        assert line.result.type == "succeeded"
        message = line.result.message
        assert message.model == "claude-haiku-4-5" and message.usage.output_tokens > 0
        text = message.content[0].text  # type: ignore[union-attr]
        assert text.startswith("[fake:claude-haiku-4-5]") and line.custom_id in text

    native = http.get(f"/v1/batches/{uuid.UUID(hex=batch.id.removeprefix('msgbatch_'))}",
                      headers=auth(key)).json()  # fmt: skip
    assert native["counts"]["succeeded"] == 5 and float(native["cost_usd"]) > 0


def test_invalid_requests_end_as_errored_results(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any
) -> None:
    fake_provider.set_script(FakeScript())
    client = client_for(new_key())
    batch = client.messages.batches.create(
        requests=[
            _request("ok"),
            _request("bad-model", model="claude-no-such-model"),
            _request("no-max-tokens", max_tokens=None),
            _request(
                "image",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
                        ],
                    }
                ],
            ),
        ]
    )
    # Invalid requests are errored from the start (our counts move before the end).
    assert batch.request_counts.errored == 3
    done = _wait_ended(client, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 3)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["ok"].type == "succeeded"
    for custom_id in ("bad-model", "no-max-tokens", "image"):
        errored = results[custom_id]
        assert errored.type == "errored"
        assert errored.error.error.type == "invalid_request_error"
    assert "claude-no-such-model" in results["bad-model"].error.error.message  # type: ignore[union-attr]


def test_bad_requests_raise_the_sdks_typed_errors(client_for: Any, new_key: Any) -> None:
    client = client_for(new_key())
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve("msgbatch_nope")
    assert missing.value.response.headers["request-id"].startswith("req_")
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[_request("same"), _request("same")])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[_request("has spaces")])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[])
    with pytest.raises(anthropic.AuthenticationError):
        client_for("llmq_not-a-key").messages.batches.list()


def test_cancel_results_delete_and_idempotence(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any, root: str
) -> None:
    fake_provider.set_script(FakeScript(latency_ms=300))
    key = new_key()
    client = client_for(key)
    batch = client.messages.batches.create(requests=[_request(f"r{i}") for i in range(60)])

    def some_succeeded() -> MessageBatch | None:
        current = client.messages.batches.retrieve(batch.id)
        return current if current.request_counts.succeeded >= 1 else None

    wait_for(some_succeeded, 60, "the first results")
    # Partial results are readable while the batch runs (the SDK waits for results_url).
    partial = httpx.get(f"{root}/anthropic/v1/messages/batches/{batch.id}/results",
                        headers={"x-api-key": key, "anthropic-version": "2023-06-01"})  # fmt: skip
    assert partial.status_code == 200 and len(partial.text.splitlines()) >= 1

    with pytest.raises(anthropic.ConflictError):  # still processing: cancel first
        client.messages.batches.delete(batch.id)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status in ("canceling", "ended")
    assert canceling.cancel_initiated_at is not None
    assert client.messages.batches.cancel(batch.id).cancel_initiated_at is not None

    done = _wait_ended(client, batch.id)
    counts = done.request_counts
    assert counts.canceled >= 1 and counts.succeeded >= 1 and counts.processing == 0
    assert counts.canceled + counts.succeeded == 60
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
    kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert kinds.count("canceled") == counts.canceled
    assert kinds.count("succeeded") == counts.succeeded

    deleted = client.messages.batches.delete(batch.id)
    assert deleted.type == "message_batch_deleted" and deleted.id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    fake_provider.set_script(FakeScript())


def test_cancel_of_a_batch_that_ended_on_its_own_is_a_conflict(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any
) -> None:
    fake_provider.set_script(FakeScript())
    client = client_for(new_key())
    batch = _wait_ended(client, client.messages.batches.create(requests=[_request("a")]).id)
    with pytest.raises(anthropic.ConflictError) as conflict:
        client.messages.batches.cancel(batch.id)
    assert conflict.value.response.headers["x-should-retry"] == "false"


def test_list_pages_both_ways(client_for: Any, new_key: Any) -> None:
    client = client_for(new_key())
    invalid = [_request("x", model="no-such-model")]  # errored at once: no provider calls
    created = [client.messages.batches.create(requests=invalid).id for _ in range(5)]
    newest_first = created[::-1]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    assert (first.first_id, first.last_id) == (newest_first[0], newest_first[1])
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # after_id
    before = client.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in before.data] == newest_first[1:3] and before.has_more


def test_another_keys_batch_is_not_found(client_for: Any, new_key: Any) -> None:
    owner, stranger = client_for(new_key()), client_for(new_key())
    batch = owner.messages.batches.create(requests=[_request("x", model="no-such-model")])
    for call in (
        lambda: stranger.messages.batches.retrieve(batch.id),
        lambda: stranger.messages.batches.cancel(batch.id),
        lambda: stranger.messages.batches.delete(batch.id),
        lambda: list(stranger.messages.batches.results(batch.id)),
    ):
        with pytest.raises(anthropic.NotFoundError):
            call()
    assert [b.id for b in stranger.messages.batches.list()] == []


def test_personal_data_is_redacted_per_message_before_it_is_stored(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any, http: Any, engine: Any
) -> None:
    fake_provider.set_script(FakeScript())
    key = new_key()
    client = client_for(key)
    email, card = f"noa.{uuid.uuid4().hex[:10]}@example.com", luhn_card()
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    content = [{"type": "text", "text": f'Refund card "{grouped}" today.'}]
    batch = client.messages.batches.create(
        requests=[
            _request("pii", system=f"The customer is {email}.",
                     messages=[{"role": "user", "content": content}]),
            _request("plain"),
        ]
    )  # fmt: skip
    _wait_ended(client, batch.id)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["plain"].type == "succeeded" and results["pii"].type == "succeeded"
    assert '"[CARD]"' in results["pii"].message.content[0].text  # type: ignore[union-attr]

    native = http.get(f"/v1/batches/{uuid.UUID(hex=batch.id.removeprefix('msgbatch_'))}/results",
                      headers=auth(key)).text.splitlines()  # fmt: skip
    findings = {
        row["custom_id"]: http.get(f"/v1/jobs/{row['job_id']}", headers=auth(key)).json()[
            "guardrails"
        ]
        for row in map(json.loads, native)
    }
    assert findings == {
        "pii": [
            {"rule": "pii.email", "action": "redact", "count": 1, "stage": "ingest"},
            {"rule": "pii.card", "action": "redact", "count": 1, "stage": "ingest"},
        ],
        "plain": [],
    }

    stored = database_text(engine)
    assert batch.id.removeprefix("msgbatch_") in stored.replace("-", "")  # the scan sees them
    # Nor was it sent: the system prompt (which no answer echoes) reached the provider redacted.
    sent = json.dumps(fake_provider.requests("claude-haiku-4-5"))
    assert "The customer is [EMAIL]." in sent
    for raw in (email, card, grouped):
        assert raw not in stored
        assert raw not in sent


def test_a_text_over_the_budget_ends_as_an_errored_result(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any
) -> None:
    fake_provider.set_script(FakeScript())
    client = client_for(new_key())
    huge = "word " * 30_000  # about 40,000 tokens; a chat text takes 32,000
    batch = client.messages.batches.create(
        requests=[_request("ok"), _request("big", messages=[{"role": "user", "content": huge}])]
    )
    assert batch.request_counts.errored == 1  # refused at submission, never run
    _wait_ended(client, batch.id)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["ok"].type == "succeeded"
    big = results["big"]
    assert big.type == "errored" and big.error.error.type == "invalid_request_error"
    assert big.error.error.message.startswith("params.messages.0.content: about")


def test_the_clients_own_max_tokens_is_a_success_with_stop_reason_max_tokens(
    client_for: Any, new_key: Any, worker: Any, fake_provider: Any
) -> None:
    """As Anthropic does: a succeeded result with the text that fit, stop_reason "max_tokens"
    and its usage, from one provider call (no retry with more tokens)."""
    fake_provider.set_script(FakeScript())
    model = f"claude-cut-{uuid.uuid4().hex[:8]}"
    client = client_for(new_key())
    batch = client.messages.batches.create(
        requests=[
            _request("cut", model=f"anthropic:{model}", max_tokens=3),
            _request("whole", model=f"anthropic:{model}"),
        ]
    )
    done = _wait_ended(client, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 0)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    cut, whole = results["cut"], results["whole"]
    assert cut.type == "succeeded" and whole.type == "succeeded"
    assert cut.message.stop_reason == "max_tokens" and cut.message.usage.output_tokens == 3
    assert cut.message.content[0].text  # type: ignore[union-attr]
    assert whole.message.stop_reason == "end_turn"
    assert fake_provider.stats()["by_model"][model] == 2

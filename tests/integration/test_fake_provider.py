"""The fake LLM provider, exercised through the REAL openai and anthropic SDKs.

Only 127.0.0.1 is contacted. No fixed sleeps: waits are polls with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llmq.testing.fake_provider import (
    REFUSAL_TEXT,
    FakeProviderServer,
    FakeScript,
    FaultRule,
    load_script,
)

pytestmark = pytest.mark.timeout(60)

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-fake-1"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as srv:
        yield srv


@pytest.fixture
def fake(server: FakeProviderServer) -> FakeProviderServer:
    """The shared server with an empty script and cleared stats."""
    server.set_script(FakeScript())
    server.reset()
    return server


def oai(server: FakeProviderServer, api_key: str = "test", timeout: float = 5) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.openai_base_url, api_key=api_key, max_retries=0, timeout=timeout
    )


def anth(
    server: FakeProviderServer, api_key: str = "test", timeout: float = 5
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key=api_key, max_retries=0, timeout=timeout
    )


def ask_openai(client: openai.OpenAI, text: str = "hi", **kw: Any) -> Any:
    return client.chat.completions.create(
        model=kw.pop("model", OPENAI_MODEL), messages=[{"role": "user", "content": text}], **kw
    )


def ask_anthropic(client: anthropic.Anthropic, text: str = "hi", **kw: Any) -> Any:
    return client.messages.create(
        model=kw.pop("model", ANTHROPIC_MODEL),
        max_tokens=kw.pop("max_tokens", 256),
        messages=[{"role": "user", "content": text}],
        **kw,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- normal answers


def test_openai_completion_content_and_usage(fake: FakeProviderServer) -> None:
    system, user = "You are terse.", "Hello there fake model, please echo me"
    resp = oai(fake).with_raw_response.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    assert resp.headers["x-request-id"]
    completion = resp.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == OPENAI_MODEL
    choice = completion.choices[0]
    expected = f"[fake:{OPENAI_MODEL}] {user}"
    assert choice.message.content == expected
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == math.ceil(len(system + user) / 4) + 3 * 2 == 19
    assert usage.completion_tokens == math.ceil(len(expected) / 4) == 15
    assert usage.total_tokens == 34
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_openai_list_content_and_40_word_cap(fake: FakeProviderServer) -> None:
    words = [f"w{i}" for i in range(60)]
    completion = oai(fake).chat.completions.create(
        model=OPENAI_MODEL,
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": " ".join(words)}]},
        ],
    )
    assert completion.choices[0].message.content == f"[fake:{OPENAI_MODEL}] " + " ".join(words[:40])


def test_anthropic_message_content_and_usage(fake: FakeProviderServer) -> None:
    system, user = "Be brief.", "Summarise this text please"
    resp = anth(fake).messages.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        system=system,
        messages=[{"role": "user", "content": [{"type": "text", "text": user}]}],
    )
    assert resp.headers["request-id"]
    message = resp.parse()
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == ANTHROPIC_MODEL
    text = message.content[0]
    assert text.type == "text"
    assert text.text == f"[fake:{ANTHROPIC_MODEL}] {user}"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    # system counts as one message: 2 * 3 overhead tokens
    assert message.usage.input_tokens == math.ceil(len(system + user) / 4) + 6 == 15
    assert message.usage.output_tokens == math.ceil(len(text.text) / 4) == 12
    assert message.usage.cache_read_input_tokens == 0


def test_max_tokens_truncation(fake: FakeProviderServer) -> None:
    long_text = "one two three four five six seven eight nine ten"
    completion = ask_openai(oai(fake), long_text, max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == f"[fake:{OPENAI_MODEL}] one two three"[:12]
    assert completion.usage.completion_tokens == 3

    legacy = ask_openai(oai(fake), long_text, max_tokens=4)
    assert legacy.choices[0].finish_reason == "length"
    assert legacy.usage.completion_tokens == 4

    message = ask_anthropic(anth(fake), long_text, max_tokens=5)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    assert len(message.content[0].text) == 20


# --------------------------------------------------------------------------- faults


def test_429_with_retry_after(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(fault="status", status=429, retry_after=2)]))
    with pytest.raises(openai.RateLimitError) as oe:
        ask_openai(oai(fake))
    assert oe.value.response.headers["retry-after"] == "2"
    assert oe.value.response.headers["retry-after-ms"] == "2000"
    assert oe.value.code == "rate_limit_exceeded"

    with pytest.raises(anthropic.RateLimitError) as ae:
        ask_anthropic(anth(fake))
    assert ae.value.response.headers["retry-after"] == "2"
    assert ae.value.type == "rate_limit_error"


def test_529_overloaded_anthropic(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(api="anthropic", fault="status", status=529)]))
    with pytest.raises(anthropic.OverloadedError) as ae:
        ask_anthropic(anth(fake))
    err = ae.value
    assert isinstance(err, anthropic.InternalServerError)
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == 529
    assert err.type == "overloaded_error"
    assert err.request_id
    # the rule is anthropic-only: OpenAI is unaffected
    assert ask_openai(oai(fake)).choices[0].finish_reason == "stop"


def test_500_server_errors(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(fault="status", status=500)]))
    with pytest.raises(openai.InternalServerError) as oe:
        ask_openai(oai(fake))
    assert oe.value.status_code == 500
    assert oe.value.type == "server_error"
    with pytest.raises(anthropic.InternalServerError) as ae:
        ask_anthropic(anth(fake))
    assert ae.value.type == "api_error"


def test_context_length_errors(fake: FakeProviderServer) -> None:
    rule = FaultRule(fault="status", status=400, context_length=True)
    fake.set_script(FakeScript(rules=[rule]))
    with pytest.raises(openai.BadRequestError) as oe:
        ask_openai(oai(fake))
    assert oe.value.code == "context_length_exceeded"
    assert oe.value.type == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as ae:
        ask_anthropic(anth(fake))
    assert ae.value.type == "invalid_request_error"
    assert "prompt is too long" in str(ae.value.api_message)


def test_malformed_body_raises_json_decode_error(fake: FakeProviderServer) -> None:
    # Both SDKs call response.json() on an application/json 200 body and let the
    # json.JSONDecodeError (a ValueError) escape; it is not wrapped in an SDK error.
    fake.set_script(FakeScript(rules=[FaultRule(fault="malformed")]))
    with pytest.raises(json.JSONDecodeError):
        ask_openai(oai(fake))
    with pytest.raises(json.JSONDecodeError):
        ask_anthropic(anth(fake))
    assert fake.stats()["by_status"] == {"200": 2}


def test_refusal(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(fault="refusal")]))
    message = ask_openai(oai(fake)).choices[0].message
    assert message.refusal == REFUSAL_TEXT
    assert message.content == REFUSAL_TEXT
    reply = ask_anthropic(anth(fake))
    assert reply.stop_reason == "refusal"
    assert reply.content[0].text == REFUSAL_TEXT


def test_hang_times_out_client_and_server_notices(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(fault="hang", hang_s=3)]))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oai(fake, timeout=0.5))
    with pytest.raises(anthropic.APITimeoutError):
        ask_anthropic(anth(fake, timeout=0.5))
    assert time.monotonic() - started < 5  # two 0.5 s timeouts, not two 3 s hangs
    # the server stops hanging as soon as the client goes away (recorded as 499)
    wait_for(lambda: fake.stats()["by_status"].get("499") == 2, timeout=2)


def test_latency_fault_and_base_latency(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(rules=[FaultRule(fault="latency", latency_ms=200)]))
    started = time.monotonic()
    ask_openai(oai(fake))
    assert time.monotonic() - started >= 0.2

    fake.set_script(FakeScript(latency_ms=150))
    started = time.monotonic()
    ask_anthropic(anth(fake))
    assert time.monotonic() - started >= 0.15


def test_first_n_fails_exactly_first_two(fake: FakeProviderServer) -> None:
    script = FakeScript(rules=[FaultRule(fault="status", status=500, first_n=2)])
    fake.set_script(script)
    client = oai(fake)
    outcomes = []
    for _ in range(4):
        try:
            ask_openai(client)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("err")
    assert outcomes == ["err", "err", "ok", "ok"]
    # replacing the script resets the counters
    fake.set_script(script)
    with pytest.raises(openai.InternalServerError):
        ask_openai(client)


def test_model_pattern_and_rule_order(fake: FakeProviderServer) -> None:
    fake.set_script(
        FakeScript(
            rules=[
                FaultRule(model="gpt-4o*", fault="status", status=429),
                FaultRule(fault="status", status=503),
            ]
        )
    )
    with pytest.raises(openai.RateLimitError):
        ask_openai(oai(fake), model="gpt-4o-mini")
    with pytest.raises(openai.InternalServerError) as oe:
        ask_openai(oai(fake), model="o3")
    assert oe.value.status_code == 503


def test_probability_is_seeded_and_deterministic(fake: FakeProviderServer) -> None:
    script = FakeScript(seed=7, rules=[FaultRule(fault="status", status=500, probability=0.5)])

    def run() -> list[bool]:
        fake.set_script(script)
        client = oai(fake)
        results = []
        for _ in range(16):
            try:
                ask_openai(client)
                results.append(True)
            except openai.InternalServerError:
                results.append(False)
        return results

    first = run()
    assert first == run()
    assert any(first) and not all(first)


def test_invalid_api_key_gives_401(fake: FakeProviderServer) -> None:
    with pytest.raises(openai.AuthenticationError) as oe:
        ask_openai(oai(fake, api_key="invalid"))
    assert oe.value.status_code == 401
    with pytest.raises(anthropic.AuthenticationError) as ae:
        ask_anthropic(anth(fake, api_key="invalid"))
    assert ae.value.type == "authentication_error"


# --------------------------------------------------------------------------- control plane


def test_stats_count_requests(fake: FakeProviderServer) -> None:
    before = time.time()
    ask_openai(oai(fake))
    ask_openai(oai(fake), model="o3")
    ask_anthropic(anth(fake))
    with pytest.raises(openai.AuthenticationError):
        ask_openai(oai(fake, api_key="invalid"))
    stats = fake.stats()
    assert stats["requests"] == 4
    assert stats["by_api"] == {"openai": 3, "anthropic": 1}
    assert stats["by_model"] == {OPENAI_MODEL: 2, "o3": 1, ANTHROPIC_MODEL: 1}
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert len(stats["timestamps"]) == 4
    assert all(before <= ts <= time.time() for ts in stats["timestamps"])
    by_model = stats["timestamps_by_model"]
    assert {m: len(ts) for m, ts in by_model.items()} == stats["by_model"]
    assert stats["timestamps"] == sorted(stats["timestamps"])  # all models, in arrival order
    fake.reset()
    assert fake.stats()["requests"] == 0 and fake.stats()["timestamps_by_model"] == {}


def test_control_endpoints(fake: FakeProviderServer) -> None:
    assert httpx.get(f"{fake.url}/_fake/health", timeout=5).json()["ok"] is True
    bad = httpx.put(f"{fake.url}/_fake/script", json={"rules": [{"fault": "nope"}]}, timeout=5)
    assert bad.status_code == 422
    good = httpx.put(f"{fake.url}/_fake/script", json={"latency_ms": 5}, timeout=5)
    assert good.status_code == 200
    assert httpx.get(f"{fake.url}/_fake/script", timeout=5).json()["latency_ms"] == 5


def test_many_concurrent_requests(fake: FakeProviderServer) -> None:
    fake.set_script(FakeScript(latency_ms=500))
    count = 200

    async def fire() -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            body = {"model": "bench", "messages": [{"role": "user", "content": "x"}]}
            responses = await asyncio.gather(
                *(
                    client.post(f"{fake.openai_base_url}/chat/completions", json=body)
                    for _ in range(count)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(fire())
    assert statuses == [200] * count
    stats = fake.stats()
    assert stats["by_status"] == {"200": count}
    # Answered side by side, not one after another (serial would be 1; the bound leaves room
    # for a slow machine that sends the requests over more than one latency period).
    assert stats["max_in_flight"] >= 20


def test_load_script(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(
        json.dumps({"latency_ms": 10, "seed": 3, "rules": [{"fault": "status", "status": 429}]})
    )
    script = load_script(str(path), latency_ms=100)
    assert script.latency_ms == 100
    assert script.seed == 3
    assert script.rules[0].status == 429
    assert load_script(None, None) == FakeScript()


def test_context_manager_lifecycle() -> None:
    script = FakeScript(rules=[FaultRule(fault="status", status=500)])
    with FakeProviderServer(script) as srv:
        url = srv.url
        assert srv.running
        with pytest.raises(openai.InternalServerError):
            ask_openai(oai(srv))
    assert not srv.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_fake/health", timeout=1)


def test_reply_rules_return_given_text_and_can_depend_on_the_prompt(
    fake: FakeProviderServer,
) -> None:
    fake.set_script(
        FakeScript(
            rules=[
                FaultRule(fault="reply", prompt_contains="again", text='{"ok": true}'),
                FaultRule(fault="reply", text="not json", finish_reason="length"),
            ]
        )
    )
    first = ask_openai(oai(fake), "first try")
    assert first.choices[0].message.content == "not json"
    assert first.choices[0].finish_reason == "length"
    again = ask_openai(oai(fake), "try again")
    assert again.choices[0].message.content == '{"ok": true}'
    assert again.choices[0].finish_reason == "stop"
    cut = ask_anthropic(anth(fake), "first try")
    assert cut.content[0].text == "not json" and cut.stop_reason == "max_tokens"
    fixed = ask_anthropic(anth(fake), "once again")
    assert fixed.content[0].text == '{"ok": true}' and fixed.stop_reason == "end_turn"

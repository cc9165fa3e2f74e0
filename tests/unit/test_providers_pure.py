from __future__ import annotations

from decimal import Decimal

import pytest

from llmq.cost.pricing import load_price_table, parse_price_table
from llmq.cost.tokens import estimate_tokens
from llmq.providers.base import CompletionRequest, code_for_status, parse_retry_after
from llmq.providers.links import Link, parse_link
from llmq.providers.openai_provider import request_body
from llmq.templates import TemplateError, get_template


def test_parse_link_accepts_provider_model_and_explains_errors() -> None:
    assert parse_link("openai:gpt-4o-mini") == Link("openai", "gpt-4o-mini")
    assert str(parse_link("anthropic:claude-haiku-4-5")) == "anthropic:claude-haiku-4-5"
    with pytest.raises(ValueError, match="must look like 'provider:model'"):
        parse_link("gpt-4o")
    with pytest.raises(ValueError, match="unknown provider 'cohere'"):
        parse_link("cohere:command")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"retry-after": "garbage"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    from email.utils import parsedate_to_datetime

    now = parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(headers, now=now) == expected


def test_status_codes_map_to_stable_names() -> None:
    assert [code_for_status(s) for s in (429, 529, 401, 404, 500, 503, 400, 408)] == [
        "rate_limited",
        "overloaded",
        "auth_error",
        "not_found",
        "server_error",
        "server_error",
        "bad_request",
        "timeout",
    ]


def test_cost_is_exact_and_charges_cached_tokens_at_the_cached_rate() -> None:
    table = load_price_table()
    # gpt-4o-mini: 0.15 in, 0.60 out, 0.075 cached, per 1M tokens.
    assert table.cost("openai:gpt-4o-mini", 1_000_000, 0) == Decimal("0.15")
    assert table.cost("openai:gpt-4o-mini", 1000, 500, cached_tokens=400) == (
        Decimal(600) * Decimal("0.15")
        + Decimal(400) * Decimal("0.075")
        + Decimal(500) * Decimal("0.60")
    ) / Decimal(1_000_000)
    assert table.cost("local:extractive", 10_000, 100) == 0
    assert table.cost("openai:unknown-model", 10, 10) is None


def test_override_table_replaces_and_adds_models(tmp_path) -> None:  # type: ignore[no-untyped-def]
    override = tmp_path / "prices.json"
    override.write_text(
        '{"version": "mine", "models": {"openai:gpt-4o-mini": '
        '{"input": 1, "output": 2}, "openai:my-ft": {"input": 3, "output": 4}}}'
    )
    table = load_price_table(override)
    assert table.cost("openai:gpt-4o-mini", 1_000_000, 0) == 1
    assert table.cost("openai:my-ft", 0, 1_000_000) == 4
    assert table.cost("anthropic:claude-haiku-4-5", 1_000_000, 0) == 1
    with pytest.raises(ValueError, match="models"):
        parse_price_table({"version": "x"})


def test_templates_render_and_reject_unknown_styles() -> None:
    template = get_template("summarize")
    rendered = template.render("A {braced} document.", {"style": "bullets"})
    assert "<document>\nA {braced} document.\n</document>" in rendered.user
    assert rendered.system is not None and "bullet points" in rendered.system
    assert rendered.document == "A {braced} document." and rendered.style == "bullets"
    with pytest.raises(TemplateError, match="unknown style 'poem'"):
        template.render("x", {"style": "poem"})
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        get_template("nope")
    prompt = get_template("prompt").render("What is 2+2?", {})
    assert prompt.user == "What is 2+2?" and prompt.system is None and prompt.document is None


def test_token_estimate_is_conservative_for_prose() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 100
    # cl100k encodes this sentence as 10 tokens; the estimate may err high, never far low.
    assert 1000 <= estimate_tokens(text) <= 1400
    assert estimate_tokens("") == 0


@pytest.mark.parametrize(
    "request_",
    [
        CompletionRequest(model="gpt-4o-mini", user="Summarize this.", max_tokens=256),
        CompletionRequest(
            model="gpt-5-nano", user="", system="Be brief.", max_tokens=64, temperature=0.2,
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": [{"type": "text", "text": "Summarize."}]}],
        ),
    ],
)  # fmt: skip
def test_openai_body_is_what_the_sdks_create_would_send(request_: CompletionRequest) -> None:
    # The provider posts its body without chat.completions.create's param transform; that is
    # only safe while the transform would leave it unchanged (no aliases, no special types).
    from openai._utils import maybe_transform
    from openai.types.chat import completion_create_params

    body = request_body(request_)
    params = completion_create_params.CompletionCreateParamsNonStreaming
    assert maybe_transform(body, params) == body
    assert body["messages"][-1]["role"] == "user"
    if request_.model.startswith("gpt-5"):  # reasoning models want max_completion_tokens
        assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}

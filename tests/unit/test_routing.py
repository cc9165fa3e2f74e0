"""Size-based routing: which chain a job runs with, and which route a submission stores."""

from __future__ import annotations

from typing import Any

import pytest

from llmq.admission.resolve import with_short_input_routes
from llmq.config_check import ConfigError, check_references
from llmq.execution import routing
from llmq.execution.cache import cache_key
from llmq.execution.outcomes import Deferred
from llmq.execution.routing import ShortInputRoute, choose_chain, route_for
from llmq.settings import Settings
from llmq.store import Outcome
from llmq.templates import Template, get_template

CHAIN = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "local:extractive"]
NANO = "openai:gpt-5-nano"
ROUTE = {"link": NANO, "max_input_tokens": 100}


@pytest.mark.parametrize(
    "link, threshold, message",
    [
        ("acme:tiny", 100, "unknown provider 'acme'"),
        ("gpt-5-nano", 100, "must look like 'provider:model'"),
        (NANO, 0, "must be positive"),
        (NANO, -3, "must be positive"),
        (NANO, 1.5, "must be an integer"),
        (NANO, True, "must be an integer"),
        (42, 100, "must be a 'provider:model' string"),
    ],
)
def test_a_bad_route_is_refused_with_a_reason(link: Any, threshold: Any, message: str) -> None:
    assert message in (routing.check_route(link, threshold) or "")
    with pytest.raises(ValueError, match=message):
        ShortInputRoute(link, threshold)


def test_a_template_with_a_bad_route_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        Template(
            name="t", version=1, system=None, user="{input}",
            short_input=ShortInputRoute("acme:x", 10),
        )  # fmt: skip
    ok = Template(name="t", version=1, system=None, user="{input}",
                  short_input=ShortInputRoute(NANO, 10))  # fmt: skip
    assert ok.short_input == ShortInputRoute(NANO, 10)


def test_parse_wants_exactly_link_and_threshold() -> None:
    assert ShortInputRoute.parse(ROUTE) == ShortInputRoute(NANO, 100)
    for bad in ({"link": NANO}, {**ROUTE, "extra": 1}, "openai:gpt-5-nano", None):
        with pytest.raises(ValueError, match="short-input route is"):
            ShortInputRoute.parse(bad)


def test_a_short_input_tries_the_cheaper_link_first_and_keeps_the_chain_behind_it() -> None:
    at = choose_chain(CHAIN, {"short_input": ROUTE}, 100)  # at the threshold: still short
    assert at.links == [NANO, *CHAIN]
    assert at.note == {
        "routed": "short_input", "link": NANO, "input_tokens": 100, "max_input_tokens": 100,
    }  # fmt: skip
    over = choose_chain(CHAIN, {"short_input": ROUTE}, 101)
    assert over.links == CHAIN and over.note is None


def test_the_cheaper_link_is_not_repeated_and_not_noted_when_it_is_already_first() -> None:
    route = {"link": "anthropic:claude-haiku-4-5", "max_input_tokens": 10}
    moved = choose_chain(CHAIN, {"short_input": route}, 5)
    assert moved.links == ["anthropic:claude-haiku-4-5", "openai:gpt-4o-mini", "local:extractive"]
    same = choose_chain(CHAIN, {"short_input": {**route, "link": CHAIN[0]}}, 5)
    assert same.links == CHAIN and same.note is None


def test_no_route_a_named_model_or_a_malformed_row_leave_the_chain_alone() -> None:
    assert choose_chain(CHAIN, {}, 1).links == CHAIN
    named = choose_chain(CHAIN, {"short_input": ROUTE, "model": "openai:gpt-4o"}, 1)
    assert named.links == ["openai:gpt-4o", *CHAIN] and named.note is None
    assert choose_chain(CHAIN, {"short_input": {"link": "x"}}, 1).links == CHAIN


def test_the_cache_key_follows_the_chain_actually_used() -> None:
    def key(tokens: int) -> str:
        links = choose_chain(CHAIN, {"short_input": ROUTE}, tokens).links
        return cache_key(links, "prompt", 1, {"user": "hi"}, {}, scope="tenant", tenant_id="t")

    assert key(5) != key(500)
    assert key(500) == cache_key(CHAIN, "prompt", 1, {"user": "hi"}, {}, scope="tenant",
                                 tenant_id="t")  # fmt: skip


def test_the_note_leads_the_route_of_an_outcome_or_a_hand_back() -> None:
    choice = choose_chain(CHAIN, {"short_input": ROUTE}, 3)
    outcome = choice.noted(Outcome(status="succeeded", route=[{"link": NANO, "result": "ok"}]))
    assert outcome.route == [choice.note, {"link": NANO, "result": "ok"}]
    deferred = choice.noted(Deferred(1.0, [{"link": NANO, "rate_limited_s": 1.0}]))
    assert deferred.route[0] == choice.note and deferred.delay_s == 1.0
    plain = choose_chain(CHAIN, {}, 3)
    assert plain.noted(outcome) is outcome


def test_route_precedence() -> None:
    own, mine = ShortInputRoute(NANO, 50), ShortInputRoute("openai:gpt-4.1-nano", 10)
    assert route_for(own, None, False, requested=None, explicit_chain=False) == own
    assert route_for(own, None, True, requested=None, explicit_chain=False) is None  # off
    configured = {"link": "anthropic:claude-haiku-5-5", "max_input_tokens": 7}
    assert route_for(own, configured, True, requested=None, explicit_chain=False) == (
        ShortInputRoute("anthropic:claude-haiku-5-5", 7)
    )
    assert route_for(own, configured, True, requested=None, explicit_chain=True) is None
    assert route_for(own, None, False, requested=mine, explicit_chain=True) == mine


def test_submission_stores_the_route_per_item_and_keeps_shared_params_shared() -> None:
    settings = Settings(template_short_input={"prompt": ROUTE})
    template = get_template("prompt")
    shared: dict[str, Any] = {"max_tokens": 50}
    own = {"short_input": {"link": "openai:gpt-4.1-nano", "max_input_tokens": 5}}
    out = with_short_input_routes(
        template, [1, 1, 1], [shared, shared, own], explicit_chain=False, settings=settings
    )
    assert out[0] == {"max_tokens": 50, "short_input": ROUTE}
    assert out[0] is out[1]  # stored once for a batch, as before
    assert out[2] is own  # the request's own route wins
    assert shared == {"max_tokens": 50}  # the caller's dict is not changed

    named = with_short_input_routes(
        template, [1, 1], [shared, own], explicit_chain=True, settings=settings
    )
    assert named[0] == shared and "short_input" not in named[0]  # a named chain is kept
    assert named[1] is own
    # Without a setting, the built-in templates name no route.
    assert with_short_input_routes(template, [1], [shared], explicit_chain=False,
                                   settings=Settings())[0] == shared  # fmt: skip


@pytest.mark.parametrize(
    "value, message",
    [
        ({"nope": ROUTE}, "unknown template 'nope'"),
        ({"prompt": {"link": "acme:x", "max_input_tokens": 5}}, "unknown provider 'acme'"),
        ({"prompt": {"link": NANO, "max_input_tokens": 0}}, "must be positive"),
        ({"prompt": {"link": NANO}}, "short-input route is"),
    ],
)
def test_the_setting_is_checked_at_start(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_references(Settings(template_short_input=value))
    check_references(Settings(template_short_input={"prompt": None}))  # null: the route is off

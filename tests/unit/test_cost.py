"""Pricing, pre-flight estimates and budget arithmetic: pure, no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from llmq.cost.budgets import (
    Shortfall,
    day_start,
    estimate_batch,
    first_configured_link,
    first_shortfall,
    from_ticks,
    month_start,
    reached_soft_limit,
    to_ticks,
)
from llmq.cost.pricing import load_price_table, parse_price_table
from llmq.cost.tokens import estimate_tokens
from llmq.settings import Settings

D = Decimal


# ---------------------------------------------------------------------------------------------
# Pricing


def test_cost_prices_cached_input_separately() -> None:
    prices = parse_price_table(
        {"models": {"openai:m": {"input": 2.0, "output": 8.0, "cached_input": 0.5}}}
    )
    # 1M input of which 400k cached, 100k output: 600k*2 + 400k*0.5 + 100k*8 = 1.2+0.2+0.8
    assert prices.cost("openai:m", 1_000_000, 100_000, 400_000) == D("2.2")
    # Without cached tokens the same call costs more.
    assert prices.cost("openai:m", 1_000_000, 100_000) == D("2.8")
    # Cached tokens never exceed the input they are part of.
    assert prices.cost("openai:m", 10, 0, 50) == D("0.000005")


def test_cost_is_exact_decimal_not_float() -> None:
    prices = parse_price_table({"models": {"openai:m": {"input": 0.15, "output": 0.60}}})
    cost = prices.cost("openai:m", 3, 7)
    assert cost == D("0.00000465")  # 3*0.15 + 7*0.60 = 4.65 per million, exactly


def test_unpriced_model_costs_none_not_zero() -> None:
    prices = parse_price_table({"models": {}})
    assert prices.cost("openai:nobody-knows", 100, 10) is None
    assert prices.estimate("openai:nobody-knows", 100, 10) is None


def test_long_prompt_tier_bills_the_whole_request_at_the_higher_rates() -> None:
    prices = parse_price_table(
        {
            "models": {
                "anthropic:h": {
                    "input": 0.1,
                    "output": 0.5,
                    "cached_input": 0.01,
                    "long_prompt": {"threshold_tokens": 100, "input": 0.5, "output": 2.5},
                }
            }
        }
    )
    assert prices.cost("anthropic:h", 100, 10) == (100 * D("0.1") + 10 * D("0.5")) / 1_000_000
    assert prices.cost("anthropic:h", 101, 10) == (101 * D("0.5") + 10 * D("2.5")) / 1_000_000


def test_estimate_is_an_upper_bound_of_any_call_within_its_limits() -> None:
    prices = parse_price_table(
        {"models": {"openai:m": {"input": 1.0, "output": 4.0, "cached_input": 0.1}}}
    )
    estimate = prices.estimate("openai:m", 500, 200)
    assert estimate == (500 * D(1) + 200 * D(4)) / 1_000_000
    for used_in, used_out, cached in [(500, 200, 0), (500, 0, 500), (120, 200, 60), (1, 1, 0)]:
        actual = prices.cost("openai:m", used_in, used_out, cached)
        assert actual is not None and actual <= estimate


def test_shipped_table_is_versioned_dated_and_prices_the_default_chain() -> None:
    prices = load_price_table()
    assert prices.version and prices.checked
    datetime.strptime(prices.checked, "%Y-%m-%d")
    for link, price in prices.models.items():
        datetime.strptime(price.effective_date, "%Y-%m-%d")
        # Embedding models produce no output tokens (output price 0).
        embedding = "embedding" in link
        assert price.input >= 0 and (price.output >= price.input or embedding), link
        assert price.cached_input <= price.input, link
        assert price.context_window and price.context_window > 0, link
    for link in Settings.model_fields["default_chain"].default:
        assert prices.get(link) is not None, link
    providers = {link.split(":")[0] for link in prices.models}
    assert {"openai", "anthropic", "local"} <= providers


def test_user_file_overrides_and_extends_the_shipped_table(tmp_path: Path) -> None:
    override = tmp_path / "prices.json"
    override.write_text(
        json.dumps(
            {
                "version": "ours-1",
                "models": {
                    "openai:gpt-4o-mini": {"input": 1, "output": 2, "effective_date": "2026-11-01"},
                    "openai:in-house": {"input": 0.01, "output": 0.02},
                },
            }
        )
    )
    prices = load_price_table(override)
    assert prices.version.endswith("+ours-1")
    mini = prices.get("openai:gpt-4o-mini")
    assert mini is not None and mini.input == D(1) and mini.cached_input == D(1)
    assert prices.get("openai:in-house") is not None
    assert prices.get("anthropic:claude-haiku-4-5") == load_price_table().get(
        "anthropic:claude-haiku-4-5"
    )


@pytest.mark.parametrize(
    "document",
    [{}, {"models": []}, {"models": {"openai:x": {"input": 1}}}, {"models": {"o:x": "cheap"}}],
)
def test_malformed_pricing_files_are_rejected(document: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_price_table(document)


def test_negative_prices_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_price_table({"models": {"openai:x": {"input": -1, "output": 1}}})


# ---------------------------------------------------------------------------------------------
# Estimator


def test_token_estimator_errs_high_against_a_four_characters_per_token_count() -> None:
    prose = (
        "The harbour authority approved a new ferry terminal. It will cost 40 million euros. "
        "Work starts in May."
    )
    assert estimate_tokens(prose) >= -(-len(prose) // 4)
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") >= 1


def test_batch_estimate_sums_items_at_the_link_price() -> None:
    prices = parse_price_table({"models": {"openai:m": {"input": 1.0, "output": 2.0}}})
    items = [(100, 50), (200, 10)]
    assert estimate_batch(prices, "openai:m", items) == (300 * D(1) + 60 * D(2)) / 1_000_000
    assert estimate_batch(prices, "openai:unpriced", items) is None


def test_first_configured_link_skips_unconfigured_providers() -> None:
    chain = ["openai:a", "anthropic:b", "local:extractive"]
    assert first_configured_link(chain, lambda p: p != "openai") == "anthropic:b"
    assert first_configured_link(chain, lambda p: True) == "openai:a"
    assert first_configured_link(chain, lambda p: False) == "openai:a"


# ---------------------------------------------------------------------------------------------
# Budget arithmetic


def test_ticks_are_exact_at_the_cost_column_scale() -> None:
    assert to_ticks(D("0.0000000001")) == 1
    assert from_ticks(to_ticks(D("12.3456789012"))) == D("12.3456789012")
    # Estimates round up so a reservation never under-counts; costs round like NUMERIC.
    assert to_ticks(D("0.00000000001"), round_up=True) == 1
    assert to_ticks(D("0.00000000001")) == 0
    assert to_ticks(D("0.00000000005")) == 1


def test_periods_are_utc_days_and_calendar_months() -> None:
    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Dec 1 UTC
    assert day_start(late) == datetime(2026, 12, 1, tzinfo=UTC)
    assert month_start(late) == datetime(2026, 12, 1, tzinfo=UTC)
    assert month_start(datetime(2026, 11, 23, 9, tzinfo=UTC)) == datetime(2026, 11, 1, tzinfo=UTC)


def test_shortfall_allows_an_estimate_that_exactly_fits() -> None:
    limits = [("daily", D("5"), D("4.5")), ("monthly", D("100"), D("10"))]
    assert first_shortfall(limits, D("0.5")) is None
    short = first_shortfall(limits, D("0.5000000001"))
    assert short == Shortfall("daily", D("5"), D("4.5"), D("0.5000000001"))
    assert short.remaining_usd == D("0.5")
    assert first_shortfall([("daily", None, D("1e9"))], D("1")) is None  # no limit set


def test_shortfall_reports_the_first_limit_that_fails_and_never_a_negative_remainder() -> None:
    short = first_shortfall([("daily", D("5"), D("1")), ("monthly", D("10"), D("12"))], D("1"))
    assert short is not None and short.scope == "monthly"
    assert short.remaining_usd == 0
    assert short.details() == {
        "scope": "monthly",
        "limit_usd": "10",
        "spent_usd": "12",
        "remaining_usd": "0",
        "estimate_usd": "1",
    }
    assert "monthly budget of $10 has $0 left" in short.message()


def test_soft_limit_at_eighty_percent() -> None:
    assert not reached_soft_limit(D("7.99"), D("10"), D("0.8"))
    assert reached_soft_limit(D("8"), D("10"), D("0.8"))
    assert not reached_soft_limit(D("0"), D("0"), D("0.8"))

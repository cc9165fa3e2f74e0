"""The provider Batch lane's pure decisions (llmq/execution/lane_rules.py)."""

from __future__ import annotations

from llmq.execution import lane_rules

PROVIDERS = {"openai", "anthropic"}


def test_the_first_link_with_a_batch_api_goes_upstream() -> None:
    assert lane_rules.batch_link(["local:extractive", "anthropic:m", "openai:n"], PROVIDERS) == (
        "anthropic:m"
    )
    assert lane_rules.batch_link(["local:extractive"], PROVIDERS) is None


def test_waiting_jobs_are_grouped_per_provider_model() -> None:
    groups, no_link = lane_rules.group_waiting(
        [
            (["openai:m"], 3, 1.0),
            (["local:x", "openai:m"], 2, 5.0),
            (["anthropic:k"], 1, 2.0),
            (["local:x"], 4, 9.0),
        ],
        PROVIDERS,
    )
    assert sorted(groups) == ["anthropic:k", "openai:m"]
    assert groups["openai:m"].chains == [["openai:m"], ["local:x", "openai:m"]]
    assert groups["openai:m"].jobs == 5
    assert groups["openai:m"].oldest_age_s == 5.0
    assert no_link == [["local:x"]]


def test_a_group_is_due_by_size_or_by_age() -> None:
    group = lane_rules.Group("openai:m", [["openai:m"]], jobs=2, oldest_age_s=1.0)
    assert not lane_rules.is_due(group, max_items=3, max_age_s=60)
    assert lane_rules.is_due(group, max_items=2, max_age_s=60)
    assert lane_rules.is_due(group, max_items=3, max_age_s=1.0)


def test_uploads_are_cut_to_the_item_and_byte_limits() -> None:
    sizes = [4, 4, 4, 4, 4]
    by_items = lane_rules.cut(sizes, lambda s: s, max_items=2, max_bytes=100)
    assert by_items == [[4, 4], [4, 4], [4]]
    by_bytes = lane_rules.cut(sizes, lambda s: s, max_items=100, max_bytes=9)
    assert by_bytes == [[4, 4], [4, 4], [4]]
    assert lane_rules.cut([20], lambda s: s, max_items=10, max_bytes=9) == [[20]]
    assert lane_rules.cut([], lambda s: s, max_items=10, max_bytes=9) == []


def test_polls_back_off_to_a_cap() -> None:
    delays = [lane_rules.poll_delay(n, 1.0, 10.0) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert lane_rules.poll_delay(10_000, 1.0, 10.0) == 10.0


def test_batch_prices_are_data_half_the_sync_price_today() -> None:
    from decimal import Decimal

    from llmq.cost.pricing import load_price_table, parse_price_table

    table = load_price_table()
    batch = table.batch()
    for link in ("openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"):
        sync_cost = table.cost(link, 1000, 500)
        assert sync_cost is not None
        assert batch.cost(link, 1000, 500) == sync_cost / 2
    assert batch.cost("local:extractive", 10, 10) is None  # no Batch API: no batch price
    own = parse_price_table(
        {
            "batch_discount": {"openai": 0.5},
            "models": {
                "openai:a": {"input": 2, "output": 4},
                "openai:b": {"input": 2, "output": 4, "batch": {"input": 1.5, "output": 1}},
            },
        }
    ).batch()
    assert own.cost("openai:a", 1_000_000, 0) == Decimal(1)
    assert own.cost("openai:b", 1_000_000, 1_000_000) == Decimal("2.5")

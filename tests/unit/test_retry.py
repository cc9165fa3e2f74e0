from __future__ import annotations

import random

import pytest

from llmq.retry import RetryPolicy


@pytest.mark.parametrize("retry_no", range(8))
def test_delay_stays_within_equal_jitter_bounds(retry_no: int) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=20)
    ceiling = min(20, 0.5 * 2**retry_no)
    rng = random.Random(retry_no)
    delays = [policy.delay(retry_no, rng) for _ in range(500)]
    assert min(delays) >= ceiling / 2
    assert max(delays) <= ceiling
    # Jitter really spreads the retries (not all clients at the same instant).
    assert max(delays) - min(delays) > ceiling / 4


def test_delay_grows_then_caps() -> None:
    policy = RetryPolicy(base_s=1, cap_s=8)
    rng = random.Random(0)
    upper = [max(policy.delay(n, rng) for _ in range(200)) for n in range(6)]
    assert upper[0] <= 1 < upper[1] <= 2 < upper[2] <= 4 < upper[3] <= 8
    assert upper[4] <= 8 and upper[5] <= 8


def test_retry_after_takes_precedence_and_is_capped() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=20, retry_after_cap_s=60)
    rng = random.Random(0)
    assert policy.delay(0, rng, retry_after_s=7.5) == 7.5
    assert policy.delay(5, rng, retry_after_s=0.0) == 0.0
    assert policy.delay(0, rng, retry_after_s=3600) == 60


def test_long_waits_are_deferred_short_ones_are_not() -> None:
    policy = RetryPolicy(inline_max_s=2)
    assert not policy.should_defer(1.99)
    assert policy.should_defer(2.01)

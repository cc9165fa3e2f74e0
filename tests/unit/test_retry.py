from __future__ import annotations

import random

import pytest

from llmq.resilience.retry import RetryPolicy, retry_call


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


def test_retry_call_rides_out_transient_errors_within_its_budget() -> None:
    failures = iter([ConnectionError(), ConnectionError()])
    sleeps: list[float] = []

    def call() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "written"

    result = retry_call(
        call, retry_on=(ConnectionError,), budget_s=10, policy=RetryPolicy(base_s=0.2, cap_s=4),
        sleep=sleeps.append, rng=random.Random(1), clock=lambda: 0.0,
    )  # fmt: skip
    assert result == "written"
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4


def test_retry_call_gives_up_before_its_budget_and_raises_the_last_error() -> None:
    sleeps: list[float] = []

    def refused() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        retry_call(
            refused, retry_on=(ConnectionError,), budget_s=5,
            policy=RetryPolicy(base_s=0.2, cap_s=4), sleep=sleeps.append,
            rng=random.Random(2), clock=lambda: 0.0,
        )  # fmt: skip
    assert sleeps and sum(sleeps) <= 5


def test_retry_call_does_not_retry_other_errors() -> None:
    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_call(
            broken, retry_on=(ConnectionError,), budget_s=5, policy=RetryPolicy(),
            sleep=lambda _: pytest.fail("slept on a bug"), rng=random.Random(0),
        )  # fmt: skip

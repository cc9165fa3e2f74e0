"""Rate-limit headers of both providers read into one snapshot, how long a response blocks a
link, the pacing figures, and the fake provider's limiter (all pure, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmq.providers.base import RateSnapshot
from llmq.providers.rate_headers import parse_duration, parse_rate_headers, parse_reset
from llmq.resilience.adaptive import (
    LearnedView,
    account_id,
    block_seconds,
    pace_limit,
    provider_accounts,
)
from llmq.settings import Settings
from llmq.testing.fake_limits import FakeLimiter, RateLimits, _go_duration

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("17", 17.0),
        ("0.25", 0.25),
        (" 2s ", 2.0),
        ("250us", 0.00025),
    ],
)
def test_go_durations_and_bare_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1x", "s", "1m-2s", "ms20"])
def test_junk_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    snapshot = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199000",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        NOW,
    )
    assert snapshot == RateSnapshot(500, 499, 0.12, 200_000, 199_000, 360.0, None)


def test_anthropic_headers_prefer_the_combined_token_limit() -> None:
    reset = datetime.fromtimestamp(NOW + 30, UTC).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-limit": "48000",
        "anthropic-ratelimit-tokens-remaining": "47000",
        "retry-after": "12",
    }
    snapshot = parse_rate_headers(headers, NOW)
    assert (snapshot.requests_limit, snapshot.requests_remaining) == (50, 0)
    assert snapshot.requests_reset_s == pytest.approx(30.0)
    assert (snapshot.tokens_limit, snapshot.tokens_remaining) == (48_000, 47_000)
    assert snapshot.retry_after_s == 12.0
    del headers["anthropic-ratelimit-tokens-limit"]
    assert parse_rate_headers(headers, NOW).tokens_limit == 40_000  # input tokens otherwise


def test_odd_and_missing_headers_are_ignored_not_fatal() -> None:
    snapshot = parse_rate_headers(
        {
            "X-RateLimit-Limit-Requests": "1e3",  # any case, a float written count
            "x-ratelimit-remaining-requests": "lots",
            "x-ratelimit-reset-requests": "whenever",
            "retry-after-ms": "1500",
        },
        NOW,
    )
    assert snapshot == RateSnapshot(requests_limit=1000, retry_after_s=1.5)
    assert parse_rate_headers({"content-type": "application/json"}, NOW).is_empty()
    # An RFC 3339 reset with an offset, one without a zone (unplaceable), one in the past.
    assert parse_reset("2023-11-14T23:14:20+01:00", NOW) == pytest.approx(
        datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC).timestamp() - NOW
    )
    assert parse_reset("2023-11-14T22:14:20", NOW) is None
    assert parse_reset("2001-01-01T00:00:00Z", NOW) == 0.0


def test_a_429_blocks_until_retry_after_or_the_exhausted_reset() -> None:
    assert block_seconds(RateSnapshot(retry_after_s=4.0), True, 60) == 4.0
    exhausted = RateSnapshot(requests_remaining=5, requests_reset_s=1.0, tokens_remaining=0,
                             tokens_reset_s=20.0)  # fmt: skip
    assert block_seconds(exhausted, True, 60) == 20.0
    assert block_seconds(RateSnapshot(tokens_remaining=0, tokens_reset_s=600.0), True, 60) == 60
    assert block_seconds(RateSnapshot(), True, 60) == 0.0  # nothing said: the job's backoff
    # A success that took the last slot blocks one slot's replenishment, not a full reset.
    last = RateSnapshot(requests_limit=600, requests_remaining=0, requests_reset_s=360.0)
    assert block_seconds(last, False, 60) == pytest.approx(0.1)
    assert block_seconds(RateSnapshot(requests_limit=600, requests_remaining=3), False, 60) == 0


def test_pace_limit_stays_under_the_learned_limit_and_the_ceiling() -> None:
    assert pace_limit(1000, 0.03) == 970
    assert pace_limit(1000, 0.03, ceiling=500) == 500
    assert pace_limit(1, 0.5) == 1  # never zero


def test_accounts_are_a_hash_never_the_key() -> None:
    first = account_id("sk-secret-1", None)
    assert first == account_id("sk-secret-1", None) and "secret" not in first
    assert first != account_id("sk-secret-2", None)
    assert first != account_id("sk-secret-1", "https://proxy.example/v1")
    accounts = provider_accounts(Settings(openai_api_key="sk-a", anthropic_api_key=None))
    assert set(accounts) == {"openai"}


def test_learned_view_headroom_and_its_line() -> None:
    view = LearnedView("openai:m", "abc", 200, 150, 1000, 100, 0.0, 2.0)
    assert view.headroom() == pytest.approx(0.1)
    assert view.describe() == (
        "openai:m: requests 150/200 left, tokens 100/1000 left, headroom 10%, seen 2 s ago"
    )
    assert LearnedView("openai:m", None, None, None, None, None, 3.0, 0).headroom() is None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_fake_limiter_sliding_window_and_both_header_sets() -> None:
    clock = Clock()
    limiter = FakeLimiter(RateLimits(rpm=180, tpm=6000, window_s=1.0), clock)  # 3 and 100
    verdicts = [limiter.check("m", 30) for _ in range(4)]
    assert [v.rejected for v in verdicts] == [False, False, False, True]
    first = parse_rate_headers(verdicts[0].headers, clock.now)
    assert (first.requests_limit, first.requests_remaining, first.tokens_remaining) == (3, 2, 70)
    anthropic = {k: v for k, v in verdicts[0].headers.items() if k.startswith("anthropic")}
    assert parse_rate_headers(anthropic, clock.now).tokens_limit == 100
    assert parse_rate_headers(verdicts[3].headers, clock.now).retry_after_s == 1.0
    clock.now += 0.5
    assert limiter.check("other", 30).rejected is False  # limits are per model
    assert limiter.check("m", 30).rejected  # still within the window
    clock.now += 0.6
    assert not limiter.check("m", 80).rejected  # the first three left the window
    assert limiter.check("m", 30).rejected  # 80 + 30 tokens > 100
    stats = limiter.stats()
    assert stats["rejected"] == 3 and len(stats["by_model"]["m"]["admitted"]) == 4


@pytest.mark.parametrize("seconds", [0.02, 0.5, 1.5, 59.25, 360.0, 3723.5])
def test_fake_reset_durations_read_back(seconds: float) -> None:
    assert parse_duration(_go_duration(seconds)) == pytest.approx(seconds, abs=1e-3)

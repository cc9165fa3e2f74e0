"""Pure parts of the batch API: webhook signatures, secrets and backoff, durations, SSE
framing and parsing, JSONL line validation."""

from __future__ import annotations

import io
import json

import pytest

from llmq.api.errors import ApiError
from llmq.api.intake import parse_jsonl
from llmq.durations import parse_duration
from llmq.telemetry.events import format_sse, parse_sse
from llmq.webhooks.delivery import SignatureError, backoff_s, derive_secret, sign, verify

BODY = b'{"id":"evt","type":"batch.completed"}'


def test_signature_round_trip_and_header_shape() -> None:
    header = sign("whsec_a", BODY, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_a", header, BODY, now=1_700_000_010) == 1_700_000_000


@pytest.mark.parametrize(
    ("secret", "body", "now", "reason"),
    [
        ("whsec_b", BODY, 1_700_000_000, "does not match"),  # wrong secret
        ("whsec_a", BODY + b" ", 1_700_000_000, "does not match"),  # body changed
        ("whsec_a", BODY, 1_700_000_301, "tolerance"),  # replayed later
    ],
)
def test_signature_rejects_tampering_and_replays(
    secret: str, body: bytes, now: int, reason: str
) -> None:
    header = sign("whsec_a", BODY, timestamp=1_700_000_000)
    with pytest.raises(SignatureError, match=reason):
        verify(secret, header, body, now=now)


def test_signature_header_variants() -> None:
    good = sign("whsec_a", BODY, timestamp=5).split(",")[1]
    # During a rotation a sender may include several v1 values; one match is enough.
    assert verify("whsec_a", f"t=5,v1={'0' * 64},{good}", BODY, now=5) == 5
    for header in ("v1=abc", "t=x,v1=abc", ""):
        with pytest.raises(SignatureError, match="timestamp"):
            verify("whsec_a", header, BODY, now=5)


def test_secrets_are_derived_per_salt_and_master_key() -> None:
    one = derive_secret("master", "salt-1")
    assert one == derive_secret("master", "salt-1") and one.startswith("whsec_")
    assert one != derive_secret("master", "salt-2")
    assert one != derive_secret("other-master", "salt-1")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), ("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), (" 2d ", 172_800)],
)
def test_durations(value: int | str, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "1w", "h", "-5", 0, "0s", "1.5h", True])
def test_bad_durations(value: int | str) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_sse_frames_parse_back_in_order() -> None:
    stream = (
        format_sse(1, "progress", {"completed": 1})
        + ": keepalive\n\n"
        + format_sse(2, "completed", {"completed": 2, "note": "a\u00e9"})
    )
    events = list(parse_sse(io.StringIO(stream)))
    assert [(e.id, e.event, e.data["completed"]) for e in events] == [
        ("1", "progress", 1),
        ("2", "completed", 2),
    ]


def test_jsonl_lines_are_validated_with_their_numbers() -> None:
    good = b'{"custom_id": "a", "input": "x"}\n\n{"input": "y"}\n'
    assert [i.input for i in parse_jsonl(io.BytesIO(good), 10)] == ["x", "y"]
    bad = b'{"input": "x"}\n{"input": ""}\n[1]\n'
    with pytest.raises(ApiError) as caught:
        parse_jsonl(io.BytesIO(bad), 10)
    assert caught.value.status == 422
    assert [(d["line"], d["loc"]) for d in caught.value.details or []] == [
        (2, "input"),
        (3, "line"),
    ]
    with pytest.raises(ApiError, match="at most 2 items"):
        parse_jsonl(io.BytesIO(b"".join(json.dumps({"input": "x"}).encode() + b"\n"
                                        for _ in range(3))), 2)  # fmt: skip
    with pytest.raises(ApiError, match="no items"):
        parse_jsonl(io.BytesIO(b"\n\n"), 2)

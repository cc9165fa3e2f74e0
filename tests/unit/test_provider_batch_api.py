"""The pure parts of llmq's provider Batch API clients: request building, size accounting,
batch states and result parsing (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmq.providers.batch_api import (
    MAX_BYTES,
    MAX_ITEMS,
    BatchRequest,
    ItemResult,
    UpstreamBatch,
    anthropic_batch_state,
    anthropic_entry,
    anthropic_entry_size,
    anthropic_params,
    check_limits,
    missing_result,
    openai_batch_state,
    openai_line,
    parse_anthropic_line,
    parse_openai_line,
)

SYSTEM_AND_USER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Résumé: the café's numbers"},
]


def _request(model: str = "gpt-4o-mini", **kw: Any) -> BatchRequest:
    return BatchRequest(
        custom_id="job-1", model=model, messages=SYSTEM_AND_USER, max_tokens=99, **kw
    )


def test_an_openai_line_is_one_chat_completion_request_with_its_newline() -> None:
    raw = openai_line(_request(temperature=0.2))
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    line = json.loads(raw)
    assert line == {
        "custom_id": "job-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": SYSTEM_AND_USER,
            "max_tokens": 99,
            "temperature": 0.2,
        },
    }


def test_an_openai_line_uses_max_completion_tokens_where_the_model_wants_it() -> None:
    body = json.loads(openai_line(_request(model="o3-mini")))["body"]
    assert body["max_completion_tokens"] == 99 and "max_tokens" not in body


def test_anthropic_params_move_system_turns_to_system() -> None:
    params = anthropic_params(_request(model="claude-haiku-4-5"))
    assert params == {
        "model": "claude-haiku-4-5",
        "max_tokens": 99,
        "messages": [SYSTEM_AND_USER[1]],
        "system": "Be brief.",
    }
    no_system = BatchRequest("j", "m", [SYSTEM_AND_USER[1]], 5, temperature=0.0)
    assert anthropic_params(no_system) == {
        "model": "m",
        "max_tokens": 5,
        "messages": [SYSTEM_AND_USER[1]],
        "temperature": 0.0,
    }


def test_sizes_count_utf8_bytes_of_what_is_uploaded() -> None:
    request = _request()
    assert len(openai_line(request)) > len(openai_line(request).decode())  # non-ASCII text
    entry = json.dumps(anthropic_entry(request), ensure_ascii=False).encode()
    assert anthropic_entry_size(request) == len(entry) + 1


def test_limits_are_each_providers_items_and_bytes() -> None:
    check_limits("openai", MAX_ITEMS["openai"], MAX_BYTES["openai"])
    with pytest.raises(ValueError, match="50000"):
        check_limits("openai", MAX_ITEMS["openai"] + 1, 10)
    with pytest.raises(ValueError, match="bytes"):
        check_limits("anthropic", 1, MAX_BYTES["anthropic"] + 1)
    with pytest.raises(ValueError, match="at least one"):
        check_limits("anthropic", 0, 0)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("validating", "in_progress"),
        ("in_progress", "in_progress"),
        ("finalizing", "in_progress"),
        ("completed", "ended"),
        ("cancelling", "cancelling"),
        ("cancelled", "cancelled"),
        ("expired", "expired"),
    ],
)
def test_openai_statuses_are_normalized(status: str, state: str) -> None:
    batch = openai_batch_state({"id": "b1", "status": status})
    assert (batch.upstream_id, batch.state, batch.raw_status) == ("b1", state, status)
    assert (batch.error is not None) == (state == "expired")


def test_a_failed_openai_batch_says_why() -> None:
    errors = {"data": [{"code": "invalid_json_line", "line": 2, "message": "bad line"}]}
    batch = openai_batch_state({"id": "b", "status": "failed", "errors": errors})
    assert batch.state == "failed"
    assert batch.error == "invalid_json_line: bad line"


def test_anthropic_states_from_processing_status_and_counts() -> None:
    counts = {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 2}
    ended = {"id": "m", "processing_status": "ended", "request_counts": counts}
    assert anthropic_batch_state(ended).state == "ended"
    all_expired = {**ended, "request_counts": {**counts, "succeeded": 0}}
    assert anthropic_batch_state(all_expired).state == "expired"
    cancelled = {**ended, "cancel_initiated_at": "2026-01-01T00:00:00Z"}
    assert anthropic_batch_state(cancelled).state == "cancelled"
    assert anthropic_batch_state({"processing_status": "canceling"}).state == "cancelling"
    assert anthropic_batch_state({"processing_status": "in_progress"}).state == "in_progress"


def test_an_openai_answer_line_gives_text_usage_and_finish() -> None:
    line = {
        "custom_id": "j",
        "response": {
            "status_code": 200,
            "body": {
                "choices": [
                    {"message": {"content": "hi", "refusal": None}, "finish_reason": "length"}
                ],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 3,
                    "prompt_tokens_details": {"cached_tokens": 4},
                },
            },
        },
        "error": None,
    }
    assert parse_openai_line(line) == ItemResult(
        "j", "succeeded", "hi", 10, 3, None, finish_reason="length", cached_tokens=4
    )


@pytest.mark.parametrize(
    ("line", "outcome", "error_part"),
    [
        (
            {"response": {"status_code": 500, "body": {"error": {"type": "server_error"}}}},
            "errored",
            "HTTP 500: server_error",
        ),
        ({"response": None, "error": {"code": "batch_expired"}}, "expired", "batch_expired"),
        ({"response": None, "error": {"code": "batch_cancelled"}}, "cancelled", "cancelled"),
        ({"response": None, "error": {"code": "other", "message": "x"}}, "errored", "other: x"),
    ],
)
def test_openai_error_lines(line: dict[str, Any], outcome: str, error_part: str) -> None:
    result = parse_openai_line({"custom_id": "j", **line})
    assert (result.outcome, result.text, result.input_tokens) == (outcome, None, 0)
    assert result.error and error_part in result.error


def test_an_anthropic_success_counts_cache_tokens_as_input_like_the_sync_provider() -> None:
    message = {
        "content": [
            {"type": "text", "text": "a"},
            {"type": "tool_use"},
            {"type": "text", "text": "b"},
        ],
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 2,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 1,
        },
    }
    result = parse_anthropic_line(
        {"custom_id": "j", "result": {"type": "succeeded", "message": message}}
    )
    assert result == ItemResult(
        "j", "succeeded", "ab", 9, 2, None, finish_reason="length", cached_tokens=3
    )


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "api_error", "message": "boom"}},
            },
            "errored",
        ),
        ({"type": "expired"}, "expired"),
        ({"type": "canceled"}, "cancelled"),
    ],
)
def test_anthropic_other_results(result: dict[str, Any], outcome: str) -> None:
    parsed = parse_anthropic_line({"custom_id": "j", "result": result})
    assert (parsed.outcome, parsed.text, parsed.output_tokens) == (outcome, None, 0)
    if outcome == "errored":
        assert parsed.error == "api_error: boom"


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("cancelled", "cancelled"),
        ("expired", "expired"),
        ("failed", "errored"),
        ("ended", "errored"),
    ],
)
def test_an_item_upstream_did_not_report_takes_the_batch_state(state: str, outcome: str) -> None:
    batch = UpstreamBatch("b", state, state, "why")  # type: ignore[arg-type]
    result = missing_result("j", batch)
    assert (result.custom_id, result.outcome) == ("j", outcome)
    assert result.error and "why" in result.error

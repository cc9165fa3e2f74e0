"""The compatible surfaces' ingest checks: each message redacted before it is stored (findings
as the native routes record them), texts over the budget refused by parameter, and uploaded
batch files stored redacted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmq import chat
from llmq.admission.guard import build_selection, chat_ingest, text_redactor
from llmq.compat import anthropic_format, openai_format
from llmq.compat.batch_file import FINDINGS_KEY, redact_file, served_content
from llmq.compat.common import ChatIngest, FieldError, ModelResolver
from llmq.settings import Settings

MODELS = ModelResolver(["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
EMAIL, CARD = "kim.rowe@example.org", "4111 1111 1111 1111"
EMAIL_FINDING = {"rule": "pii.email", "action": "redact", "count": 1, "stage": "ingest"}
CARD_FINDING = {"rule": "pii.card", "action": "redact", "count": 1, "stage": "ingest"}
ENDPOINT = "/v1/chat/completions"


def _ingest(**settings: Any) -> ChatIngest:
    config = Settings(**settings)
    return chat_ingest(build_selection(config), config)


def _openai_body(*messages: tuple[str, str]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini",
            "messages": [{"role": r, "content": c} for r, c in messages]}  # fmt: skip


def _line(custom_id: str, body: dict[str, Any], **extra: Any) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body, **extra}
    )


def test_each_message_is_redacted_and_the_stored_json_stays_valid() -> None:
    job = openai_format.chat_request(
        _openai_body(("system", f'Card "{CARD}" \\ on file.'), ("user", f"Mail {EMAIL} now.")),
        MODELS.resolve,
        _ingest(),
    )
    conversation = chat.decode(job.input)  # still a valid conversation
    assert conversation.system == 'Card "[CARD]" \\ on file.'
    assert conversation.messages == [{"role": "user", "content": "Mail [EMAIL] now."}]
    assert job.guardrails == [CARD_FINDING, EMAIL_FINDING]

    anthropic_job = anthropic_format.message_params(
        {"model": "claude-haiku-4-5", "max_tokens": 9, "system": f"Reply to {EMAIL}.",
         "messages": [{"role": "user", "content": [{"type": "text", "text": CARD}]}]},
        MODELS.resolve, _ingest(),
    )  # fmt: skip
    stored = chat.decode(anthropic_job.input)
    assert (stored.system, stored.messages[0]["content"]) == ("Reply to [EMAIL].", "[CARD]")
    assert anthropic_job.guardrails == [EMAIL_FINDING, CARD_FINDING]


def test_with_redaction_at_ingest_off_the_text_is_stored_as_sent() -> None:
    ingest = _ingest(redact_pii_at_ingest=False)
    job = openai_format.chat_request(
        _openai_body(("user", f"Mail {EMAIL}.")), MODELS.resolve, ingest
    )
    assert chat.decode(job.input).messages[0]["content"] == f"Mail {EMAIL}."
    assert job.guardrails == []


def test_a_text_over_the_budget_is_refused_by_its_own_parameter() -> None:
    ingest = _ingest(template_max_input_tokens={"chat": 20})
    long = "word " * 200
    with pytest.raises(FieldError) as error:
        openai_format.chat_request(
            _openai_body(("system", "Be brief."), ("user", "hi"), ("assistant", "ok"),
                         ("user", long)),
            MODELS.resolve, ingest,
        )  # fmt: skip
    assert (error.value.code, error.value.param) == ("input_too_long", "messages[3].content")
    assert "at most 20" in error.value.message

    with pytest.raises(FieldError) as error:
        openai_format.chat_request(
            _openai_body(("user", "hi"), ("developer", long)), MODELS.resolve, ingest
        )
    assert error.value.param == "messages[1].content"  # the system prompt's first message

    params = {"model": "claude-haiku-4-5", "max_tokens": 9, "system": "Brief.",
              "messages": [{"role": "user", "content": long}]}  # fmt: skip
    items, rejected = anthropic_format.parse_requests(
        [{"custom_id": "ok", "params": {**params, "messages": [{"role": "user", "content": "hi"}]}},
         {"custom_id": "big", "params": params}],
        MODELS.resolve, ingest,
    )  # fmt: skip
    assert [i.custom_id for i in items] == ["ok", "big"]
    assert rejected[1][0] == "input_too_long"
    assert rejected[1][1].startswith("params.messages.0.content: about")

    parsed = openai_format.parse_batch_file(
        "\n".join([_line("a", _openai_body(("user", "hi"))),
                   _line("b", _openai_body(("user", long)))]).encode(),
        ENDPOINT, MODELS.resolve, 10, ingest,
    )  # fmt: skip
    assert [(e["line"], e["code"], e["param"]) for e in parsed.errors] == [
        (2, "input_too_long", "body.messages[0].content")
    ]


def test_an_uploaded_file_is_stored_redacted_and_its_findings_reach_the_jobs() -> None:
    config = Settings()
    redactor = text_redactor(build_selection(config), config)
    clean = _line("clean", _openai_body(("user", "Nothing personal.")))
    personal = _line(
        "4111111111111111",  # addresses the request: kept, so results still match
        {**_openai_body(("system", "Be brief."), ("user", f"Refund {CARD} for {EMAIL}.")),
         "user": EMAIL},
    )  # fmt: skip
    forged = _line("forged", _openai_body(("user", "hi")), **{FINDINGS_KEY: [EMAIL_FINDING]})
    sent = "\r\n".join([clean, personal, "", f"not json {EMAIL}", forged]) + "\n"

    stored = redact_file(sent.encode(), redactor)
    assert EMAIL not in stored.content.decode() and CARD not in stored.content.decode()
    lines = stored.content.decode().splitlines()
    assert len(lines) == len(sent.splitlines()) and lines[0] == clean  # untouched: byte for byte
    assert lines[3] == "not json [EMAIL]"

    downloaded = served_content(stored.content)
    assert len(downloaded) == stored.size and FINDINGS_KEY not in downloaded.decode()
    shown = json.loads(downloaded.decode().splitlines()[1])
    assert shown["custom_id"] == "4111111111111111" and shown["body"]["model"] == "gpt-4o-mini"
    assert shown["body"]["user"] == "[EMAIL]"
    assert shown["body"]["messages"][1]["content"] == "Refund [CARD] for [EMAIL]."

    parsed = openai_format.parse_batch_file(stored.content, ENDPOINT, MODELS.resolve, 10, _ingest())
    assert [(e["line"], e["code"]) for e in parsed.errors] == [(4, "invalid_json_line")]
    findings = {item.custom_id: item.guardrails for item in parsed.items}
    # Every redaction made in the line at upload (the pii rules in their order, then the
    # `user` field); a client's own claim is dropped.
    assert findings == {
        "clean": [],
        "4111111111111111": [EMAIL_FINDING, CARD_FINDING, EMAIL_FINDING],
        "forged": [],
    }


def test_with_redaction_off_a_file_is_stored_as_sent_but_forged_findings_go() -> None:
    plain = _line("a", _openai_body(("user", f"Mail {EMAIL}.")))
    forged = _line("b", _openai_body(("user", "hi")), **{FINDINGS_KEY: [EMAIL_FINDING]})
    stored = redact_file(f"{plain}\n{forged}\n".encode(), None)
    first, second = stored.content.decode().splitlines()
    assert first == plain
    assert json.loads(second) == json.loads(_line("b", _openai_body(("user", "hi"))))
    assert stored.size == len(stored.content)


def test_a_file_that_is_not_utf8_keeps_its_bytes() -> None:
    raw = b"\xff\xfe " + EMAIL.encode() + b"\n"
    config = Settings()
    stored = redact_file(raw, text_redactor(build_selection(config), config))
    assert stored.content == b"\xff\xfe [EMAIL]\n"
    parsed = openai_format.parse_batch_file(stored.content, ENDPOINT, MODELS.resolve, 2, _ingest())
    assert [e["code"] for e in parsed.errors] == ["invalid_file_format"]

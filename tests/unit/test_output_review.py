"""Output review: truncated answers and JSON (with a JSON Schema) get one more try, then fail."""

from __future__ import annotations

import json

import pytest

from llmq.execution.output_review import (
    ACCEPT_TRUNCATION,
    Accept,
    Fail,
    OutputReview,
    OutputSpec,
    Retry,
    check_schema,
    corrective_request,
    finish_reason,
    prepare,
    validate_json,
)
from llmq.guardrails import UnsafeOutputGuard
from llmq.providers.base import Completion, CompletionRequest, Usage

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
    "additionalProperties": False,
}
REQUEST = CompletionRequest(
    model="m", user="Describe the film.", system="Be brief.", max_tokens=100
)


def _done(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text=text, usage=Usage(), finish_reason=finish_reason)


def test_spec_from_params() -> None:
    assert OutputSpec.from_params({}) == OutputSpec()
    assert OutputSpec.from_params({"response_format": "json"}).wants_json
    assert not OutputSpec.from_params({"response_format": "text"}).wants_json
    spec = OutputSpec.from_params({"json_schema": SCHEMA, "max_tokens": 50})
    assert (spec.wants_json, spec.schema, spec.own_max_tokens) == (True, SCHEMA, True)


def test_prepare_adds_the_json_instruction_and_schema_to_the_system_prompt() -> None:
    assert prepare(REQUEST, OutputSpec()) is REQUEST
    prepared = prepare(REQUEST, OutputSpec(wants_json=True, schema=SCHEMA))
    assert prepared.system is not None
    assert prepared.system.startswith("Be brief.\n\n")
    assert json.dumps(SCHEMA) in prepared.system
    assert prepared.user == REQUEST.user
    bare = prepare(CompletionRequest(model="m", user="u"), OutputSpec(wants_json=True))
    assert bare.system is not None and "JSON" in bare.system and "Schema" not in bare.system


@pytest.mark.parametrize(
    "text",
    [
        '{"title": "Heat", "year": 1995}',
        '  {"title": "Heat", "year": 1995}\n',
        '```json\n{"title": "Heat", "year": 1995}\n```',
        '```\n{"title": "Heat", "year": 1995}```',
    ],
)
def test_valid_json_is_accepted_without_its_fence(text: str) -> None:
    cleaned, problem = validate_json(text, SCHEMA)
    assert problem is None
    assert json.loads(cleaned) == {"title": "Heat", "year": 1995}


@pytest.mark.parametrize(
    ("text", "detail", "summary"),
    [
        ("Sure! Here it is.", "not valid JSON (Expecting value at line 1 column 1)", "not valid"),
        ('{"title": "Heat", "year": 1995', "not valid JSON", "not valid JSON"),
        ('{"title": "Heat"}', "at $: 'year' is a required property", "rule 'required'"),
        ('{"title": "Heat", "year": "nineteen"}', "at $.year: 'nineteen' is not of type", "type"),
        ('{"title": "Heat", "year": 1, "x": 1}', "Additional properties", "additionalProperties"),
        ("[1, 2]", "is not of type 'object'", "rule 'type'"),
    ],
)
def test_invalid_json_is_explained(text: str, detail: str, summary: str) -> None:
    _, problem = validate_json(text, SCHEMA)
    assert problem is not None
    assert detail in problem.detail
    assert summary in problem.summary


def test_the_stored_summary_never_quotes_the_answer() -> None:
    _, problem = validate_json('{"title": "jo@example.org", "year": "4111111111111111"}', SCHEMA)
    assert problem is not None
    assert "4111111111111111" in problem.detail  # the model is told exactly what was wrong
    assert "4111111111111111" not in problem.summary  # the job record is not


def test_without_a_schema_any_json_value_is_fine() -> None:
    assert validate_json("[1, 2, 3]", None)[1] is None
    assert validate_json("not json", None)[1] is not None


def test_corrective_request_appends_the_validation_error_to_the_prompt() -> None:
    _, problem = validate_json('{"title": "Heat"}', SCHEMA)
    assert problem is not None
    corrected = corrective_request(REQUEST, problem)
    assert corrected.user.startswith(REQUEST.user)
    assert "Your previous answer was rejected" in corrected.user
    assert "'year' is a required property" in corrected.user
    assert (corrected.system, corrected.max_tokens) == (REQUEST.system, REQUEST.max_tokens)


@pytest.mark.parametrize(
    ("schema", "valid"),
    [(SCHEMA, True), ({"type": "objekt"}, False), ({"required": "title"}, False), ({}, True)],
)
def test_schemas_are_checked(schema: dict[str, object], valid: bool) -> None:
    assert (check_schema(schema) is None) is valid


def test_invalid_json_gets_exactly_one_corrective_retry() -> None:
    review = OutputReview(OutputSpec(wants_json=True, schema=SCHEMA), max_tokens_cap=4096)
    first = review.format('{"title": "Heat"}', REQUEST)
    assert isinstance(first, Retry) and first.reason == "invalid_output"
    assert "'year' is a required property" in first.request.user
    second = review.format('{"title": "Heat"}', first.request)
    assert isinstance(second, Fail) and second.code == "invalid_output"
    assert "after one corrective retry" in second.message


def test_a_corrected_answer_is_accepted() -> None:
    review = OutputReview(OutputSpec(wants_json=True, schema=SCHEMA), max_tokens_cap=4096)
    assert isinstance(review.format("nope", REQUEST), Retry)
    assert review.format('{"title": "Heat", "year": 1995}', REQUEST) == Accept(
        '{"title": "Heat", "year": 1995}'
    )


def test_text_jobs_are_accepted_as_they_are() -> None:
    review = OutputReview(OutputSpec(), max_tokens_cap=4096)
    assert review.format("plain words", REQUEST) == Accept("plain words")


def test_a_truncated_answer_is_retried_once_with_twice_the_tokens() -> None:
    review = OutputReview(OutputSpec(), max_tokens_cap=4096)
    assert review.truncation(_done("complete"), REQUEST) is None
    first = review.truncation(_done("cut", "length"), REQUEST)
    assert isinstance(first, Retry) and first.request.max_tokens == 200
    second = review.truncation(_done("cut again", "length"), first.request)
    assert isinstance(second, Fail) and second.code == "truncated_output"
    assert "max_tokens=200" in second.message


def test_the_retry_is_capped_and_skipped_at_the_cap() -> None:
    review = OutputReview(OutputSpec(), max_tokens_cap=150)
    step = review.truncation(_done("cut", "length"), REQUEST)
    assert isinstance(step, Retry) and step.request.max_tokens == 150
    at_cap = OutputReview(OutputSpec(), max_tokens_cap=100)
    assert isinstance(at_cap.truncation(_done("cut", "length"), REQUEST), Fail)


def test_a_job_that_set_max_tokens_keeps_its_cap() -> None:
    review = OutputReview(OutputSpec(own_max_tokens=True), max_tokens_cap=4096)
    step = review.truncation(_done("cut", "length"), REQUEST)
    assert isinstance(step, Fail) and step.code == "truncated_output"


def test_a_compat_job_gets_its_cut_off_answer_at_its_own_max_tokens() -> None:
    """OpenAI answers max_tokens=3 with finish_reason "length", not an error: so do we, at once."""
    spec = OutputSpec.from_params({"max_tokens": 3, ACCEPT_TRUNCATION: True})
    assert spec.own_max_tokens and spec.accept_truncation
    review = OutputReview(spec, max_tokens_cap=4096)
    assert review.truncation(_done("cut", "length"), REQUEST) is None  # accepted, no retry
    assert review.retried == set()


def test_a_compat_job_without_max_tokens_gets_one_retry_then_the_cut_off_answer() -> None:
    # The limit was ours (the default max tokens), not the client's: raise it once first.
    review = OutputReview(OutputSpec.from_params({ACCEPT_TRUNCATION: True}), max_tokens_cap=4096)
    first = review.truncation(_done("cut", "length"), REQUEST)
    assert isinstance(first, Retry) and first.request.max_tokens == 200
    assert review.truncation(_done("cut again", "length"), first.request) is None


def test_the_finish_reason_is_read_from_the_answering_link() -> None:
    assert finish_reason(None) == finish_reason([]) == "stop"
    assert finish_reason([{"link": "a:b", "result": "ok"}]) == "stop"
    cut = [{"link": "a:x", "result": "timeout"},
           {"link": "a:b", "result": "ok", "finish_reason": "length"}]  # fmt: skip
    assert finish_reason(cut) == "length"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Run rm -rf --no-preserve-root / to clean up.", "rm_rf_root"),
        ("chmod 0777 /srv/app", "chmod_777"),
        ("exec(zlib.decompress(blob))", "eval_encoded_payload"),
        ("DROP TABLE IF EXISTS accounts;", "drop_table"),
        ("TRUNCATE TABLE audit_log", "truncate_table"),
    ],
)
def test_unsafe_output_rules_cover_common_variants(text: str, rule: str) -> None:
    assert UnsafeOutputGuard().check(text).blocked_by == f"unsafe_output.{rule}"

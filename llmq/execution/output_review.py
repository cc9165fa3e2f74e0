"""Output checks that can ask the model again: truncated answers and JSON that a job asked for.

Each kind of retry happens at most once per job:
- truncated (finish_reason "length"): once more with twice the max_tokens (up to a cap), unless
  the job set max_tokens itself, whose cap is respected; then the job fails `truncated_output`,
  or, for a job with params.accept_truncation (set by the OpenAI/Anthropic-compatible routes,
  whose clients expect finish_reason "length" / stop_reason "max_tokens" as an answer), succeeds
  with the cut-off text, marked `finish_reason: "length"` in its route.
- JSON (params.response_format "json" and/or params.json_schema): the answer must parse (a
  surrounding ``` fence is tolerated) and match the schema (jsonschema). Once, the prompt is sent
  again with the validation error appended; then the job fails `invalid_output`.

The JSON instruction is part of the prompt (not a provider's structured-output mode) so every
provider in a fallback chain gets the same request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from llmq.errors import JobErrorCode
from llmq.providers.base import Completion, CompletionRequest

_FENCE = re.compile(r"\A```[A-Za-z0-9_-]*\s*\n(?P<body>.*?)\n?```\s*\Z", re.DOTALL)
# The validation error goes back to the model; only its first part, so a huge instance or
# schema does not blow up the corrective prompt.
_MAX_ERROR_CHARS = 600
# A job param: a cut-off answer is a result, not a failure (the compatible APIs' contract).
ACCEPT_TRUNCATION = "accept_truncation"


@dataclass(frozen=True)
class OutputSpec:
    """What the job asked of the output, read from its params."""

    wants_json: bool = False
    schema: dict[str, Any] | None = None
    own_max_tokens: bool = False
    accept_truncation: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> OutputSpec:
        schema = params.get("json_schema")
        return cls(
            wants_json=params.get("response_format") == "json" or schema is not None,
            schema=schema if isinstance(schema, dict) else None,
            own_max_tokens=params.get("max_tokens") is not None,
            accept_truncation=params.get(ACCEPT_TRUNCATION) is True,
        )


def check_schema(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a usable JSON Schema (None if it is): checked at submission."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"json_schema is not a valid JSON Schema: {exc.message}"
    return None


def json_instruction(spec: OutputSpec) -> str:
    text = "Respond with one JSON value only: no prose before or after it and no code fences."
    if spec.schema is not None:
        text += " It must conform to this JSON Schema:\n" + json.dumps(spec.schema)
    return text


def prepare(request: CompletionRequest, spec: OutputSpec) -> CompletionRequest:
    """The request with the JSON instruction added to the system prompt (when JSON is asked)."""
    if not spec.wants_json:
        return request
    system = f"{request.system}\n\n{json_instruction(spec)}" if request.system else None
    return replace(request, system=system or json_instruction(spec))


@dataclass(frozen=True)
class JsonProblem:
    """Why an answer is not the JSON asked for: `detail` (for the model) may quote the answer;
    `summary` (stored on the job) never does."""

    detail: str
    summary: str


def validate_json(text: str, schema: dict[str, Any] | None) -> tuple[str, JsonProblem | None]:
    """(the JSON text with any fence removed, the problem or None)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group("body").strip()
    try:
        value = json.loads(stripped)
    except ValueError as exc:
        where = (
            f"line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else "start"
        )
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return stripped, JsonProblem(
            f"the answer is not valid JSON ({message} at {where})",
            f"the output is not valid JSON ({message} at {where})",
        )
    if schema is None:
        return stripped, None
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return stripped, None
    path = error.json_path
    return stripped, JsonProblem(
        f"the JSON does not match the schema at {path}: {error.message}"[:_MAX_ERROR_CHARS],
        f"the output does not match the JSON Schema at {path} (rule {error.validator!r})",
    )


def corrective_request(request: CompletionRequest, problem: JsonProblem) -> CompletionRequest:
    """The same request with the problem appended, so the model knows what to fix."""
    note = (
        f"\n\nYour previous answer was rejected: {problem.detail}. "
        "Answer again with only the corrected JSON value."
    )
    return replace(request, user=request.user + note)


@dataclass(frozen=True)
class Accept:
    text: str


@dataclass(frozen=True)
class Retry:
    request: CompletionRequest
    reason: JobErrorCode  # TRUNCATED_OUTPUT or INVALID_OUTPUT: what the retry is for


@dataclass(frozen=True)
class Fail:
    code: JobErrorCode
    message: str


Step = Accept | Retry | Fail


def finish_reason(route: list[dict[str, Any]] | None) -> str:
    """ "length" when the job's answer was cut off at max_tokens (an accepted truncation), else
    "stop": read from the link that answered, where the pipeline notes it."""
    truncated = any(entry.get("finish_reason") == "length" for entry in route or [])
    return "length" if truncated else "stop"


@dataclass
class OutputReview:
    """Per job: decides, answer by answer, to accept, ask again (once per kind) or fail."""

    spec: OutputSpec
    max_tokens_cap: int
    retried: set[str] = field(default_factory=set)

    def truncation(self, completion: Completion, request: CompletionRequest) -> Retry | Fail | None:
        if completion.finish_reason != "length":
            return None
        bigger = min(self.max_tokens_cap, request.max_tokens * 2)
        if (
            JobErrorCode.TRUNCATED_OUTPUT in self.retried
            or self.spec.own_max_tokens
            or bigger <= (request.max_tokens)
        ):
            if self.spec.accept_truncation:
                return None  # the cut-off answer is the result
            return Fail(
                JobErrorCode.TRUNCATED_OUTPUT,
                f"the output was cut off at max_tokens={request.max_tokens} (finish_reason length)",
            )
        self.retried.add(JobErrorCode.TRUNCATED_OUTPUT)
        return Retry(replace(request, max_tokens=bigger), JobErrorCode.TRUNCATED_OUTPUT)

    def format(self, text: str, request: CompletionRequest) -> Accept | Retry | Fail:
        if not self.spec.wants_json:
            return Accept(text)
        cleaned, problem = validate_json(text, self.spec.schema)
        if problem is None:
            return Accept(cleaned)
        if JobErrorCode.INVALID_OUTPUT in self.retried:
            return Fail(
                JobErrorCode.INVALID_OUTPUT, problem.summary + " after one corrective retry"
            )
        self.retried.add(JobErrorCode.INVALID_OUTPUT)
        return Retry(corrective_request(request, problem), JobErrorCode.INVALID_OUTPUT)

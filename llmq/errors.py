"""llmq's errors and the error codes a job can end with: a leaf module (imports nothing of llmq).

Every exception the product raises on purpose derives from `LlmqError`, so a caller can tell
ours from a library's. `JobErrorCode` values are the API contract: they appear in
`GET /v1/jobs/{id}` (`error_code`), in batch results and webhooks; never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class LlmqError(Exception):
    """Base of every error llmq raises on purpose."""


class UserError(LlmqError, RuntimeError):
    """A problem the user fixes (a setting, a service to start, a refused request), not a bug:
    the CLI prints its message as one line on stderr and exits 1, without a traceback."""


class JobErrorCode(StrEnum):
    """Why a job ended without an answer: the value of `jobs.error_code`.

    These values are the API contract: clients read them in `GET /v1/jobs/{id}` (`error_code`),
    in batch results, webhooks and the compatible APIs' error bodies, and dashboards group by
    them. Add new ones freely; never rename or remove one.
    """

    # Before any provider call: the job itself is refused.
    BAD_TEMPLATE = "bad_template"
    INPUT_BLOCKED = "input_blocked"
    GUARDRAIL_ERROR = "guardrail_error"
    # The fallback chain.
    NO_PROVIDER_AVAILABLE = "no_provider_available"
    CONTEXT_TOO_LONG = "context_too_long"
    ALL_PROVIDERS_FAILED = "all_providers_failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    # The answer, reviewed.
    TRUNCATED_OUTPUT = "truncated_output"
    INVALID_OUTPUT = "invalid_output"
    OUTPUT_BLOCKED = "output_blocked"
    # The job's life around the pipeline.
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    WORKER_LOST = "worker_lost"
    INTERNAL_ERROR = "internal_error"
    # A long document: a part failed, or the parent ended before a part ran.
    CHUNK_FAILED = "chunk_failed"
    REDUCE_FAILED = "reduce_failed"
    PARENT_ENDED = "parent_ended"
    # A compatible API's batch request refused at intake (stored failed, answered as errored).
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    UNSUPPORTED_CONTENT = "unsupported_content"
    MODEL_NOT_FOUND = "model_not_found"
    INPUT_TOO_LONG = "input_too_long"

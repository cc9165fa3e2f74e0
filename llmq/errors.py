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
    """Why a job ended without an answer (`jobs.error_code`)."""

    ALL_PROVIDERS_FAILED = "all_providers_failed"
    BAD_TEMPLATE = "bad_template"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    CONTEXT_TOO_LONG = "context_too_long"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    EXPIRED = "expired"
    GUARDRAIL_ERROR = "guardrail_error"
    INPUT_BLOCKED = "input_blocked"
    INTERNAL_ERROR = "internal_error"
    INVALID_OUTPUT = "invalid_output"
    NO_PROVIDER_AVAILABLE = "no_provider_available"
    OUTPUT_BLOCKED = "output_blocked"
    PARENT_ENDED = "parent_ended"
    TRUNCATED_OUTPUT = "truncated_output"
    WORKER_LOST = "worker_lost"

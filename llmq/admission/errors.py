"""The one error a refused submission raises, whatever stage refused it."""

from __future__ import annotations

from typing import Any

from llmq.errors import LlmqError


class AdmissionError(LlmqError):
    """A request refused before anything is written. `status` is the HTTP status the API
    answers with, `code` the stable error code clients match on, `details` one entry per
    offending field or item (`{loc, message, type}` or the stage's own keys)."""

    def __init__(
        self, status: int, code: str, message: str, *, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

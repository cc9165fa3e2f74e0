"""A batch's shadow spec (llmq/evals/spec.py), checked against its template before anything is
written: its shape was checked by the request schema; here, that its version exists."""

from __future__ import annotations

from typing import Any

from llmq.evals.spec import ShadowSpec
from llmq.templates import get_template

from .errors import AdmissionError


def check_shadow(template: str, raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec as it is stored, or AdmissionError 422 invalid_shadow."""
    if raw is None:
        return None
    try:
        spec = ShadowSpec.parse(raw)
        get_template(template, spec.version)
    except ValueError as exc:  # TemplateError is a ValueError
        raise AdmissionError(422, "invalid_shadow", f"shadow: {exc}") from exc
    return spec.as_json()

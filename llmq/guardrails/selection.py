"""Which guardrails run for a template: its own chains when it declares them, else the settings'.

Chains are built once per template and reused (guardrails are stateless). Every template is
resolved when the selection is created, so a misspelt name stops a worker or the API at start
instead of failing jobs one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from llmq.templates import Template

from . import Guardrail, build_chain, run_chain


class GuardrailSelection:
    def __init__(
        self,
        input_names: list[str],
        output_names: list[str],
        *,
        banned_terms: list[str] | None = None,
        max_input_tokens: dict[str, int] | None = None,
        templates: Iterable[Template] = (),
    ) -> None:
        self._input_names = list(input_names)
        self._output_names = list(output_names)
        self._banned = list(banned_terms or [])
        self._limits = dict(max_input_tokens or {})
        self._input: dict[tuple[str, int], list[Guardrail]] = {}
        self._output: dict[tuple[str, int], list[Guardrail]] = {}
        for template in templates:
            self.input_for(template)
            self.output_for(template)

    def token_limit(self, template: Template) -> int | None:
        """The template's input budget in tokens; LLMQ_TEMPLATE_MAX_INPUT_TOKENS overrides it."""
        return self._limits.get(template.name, template.max_input_tokens)

    def input_for(self, template: Template) -> list[Guardrail]:
        key = (template.name, template.version)
        chain = self._input.get(key)
        if chain is None:
            names = template.input_guardrails
            chain = self._input[key] = build_chain(
                list(names) if names is not None else self._input_names,
                max_input_tokens=self.token_limit(template),
                banned_terms=self._banned,
            )
        return chain

    def output_for(self, template: Template) -> list[Guardrail]:
        key = (template.name, template.version)
        chain = self._output.get(key)
        if chain is None:
            names = template.output_guardrails
            chain = self._output[key] = build_chain(
                list(names) if names is not None else self._output_names,
                banned_terms=self._banned,
            )
        return chain

    def redactors_for(self, template: Template) -> list[Guardrail]:
        """The redacting guardrails of the template's input chain, in order: what runs at ingest
        so that personal data is replaced before anything is stored or logged."""
        return [g for g in self.input_for(template) if getattr(g, "redacts", False)]


def redact(redactors: list[Guardrail], text: str) -> tuple[str, list[dict[str, Any]]]:
    """Run redactors on one plain `text`: the redacted text and the findings (counts only), each
    marked stage "ingest". A redactor that blocks is ignored here: blocking is the worker's
    decision. A job's texts are redacted with llmq/guardrails/job_guard.py."""
    if not redactors:
        return text, []
    result = run_chain(redactors, text)
    return result.text, [{**asdict(f), "stage": "ingest"} for f in result.findings]

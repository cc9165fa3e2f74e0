"""The guardrail interface: a named check that may block, redact or flag text.

A guardrail never raises for bad *content*; it returns a verdict. An exception from a guardrail
means the guardrail itself is broken, and the pipeline fails the job closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Action = Literal["block", "redact", "flag"]


@dataclass(frozen=True)
class Finding:
    """One rule that fired. Holds counts only: never the matched text (it may be PII)."""

    rule: str
    action: Action
    count: int = 1


@dataclass(frozen=True)
class Verdict:
    """What a guardrail decided about one text.

    `text` is the text to pass on (redacted if a redaction rule fired). `blocked_by` names the rule
    that blocked, if any.
    """

    text: str
    findings: tuple[Finding, ...] = ()
    blocked_by: str | None = None

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None


class Guardrail(Protocol):
    name: str

    def check(self, text: str) -> Verdict: ...


@dataclass
class ChainResult:
    text: str
    findings: list[Finding] = field(default_factory=list)
    blocked_by: str | None = None


def run_chain(guardrails: list[Guardrail], text: str) -> ChainResult:
    """Run guardrails in order; redactions feed forward; the first block stops the chain."""
    result = ChainResult(text=text)
    for guardrail in guardrails:
        verdict = guardrail.check(result.text)
        result.findings.extend(verdict.findings)
        result.text = verdict.text
        if verdict.blocked:
            result.blocked_by = verdict.blocked_by
            break
    return result

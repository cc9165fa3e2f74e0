"""Guardrails that run at admission, before any row is written: plain prompts over the template's
token budget are refused (422), and personal data is redacted (LLMQ_REDACT_PII_AT_INGEST) in
every text of a job that reaches a provider (input, template variables, a chat's messages), so
the raw values never reach Postgres, the broker or a log line. The findings (counts only) go on
the job record; the worker runs its full input chain again on the stored, redacted text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmq.chat import Conversation
from llmq.compat.common import ChatIngest, FieldError, TextRedactor
from llmq.cost.tokens import estimate_tokens
from llmq.guardrails import load_plugins
from llmq.guardrails.job_guard import guard_job
from llmq.guardrails.selection import GuardrailSelection, redact
from llmq.settings import Settings
from llmq.templates import TEMPLATES, Template

from .errors import AdmissionError

# How many offending items a 422 lists: enough to fix a batch, bounded for a 50k-item one.
MAX_DETAILS = 20


def build_selection(settings: Settings) -> GuardrailSelection:
    """Built at app start so an unknown guardrail name or a broken plugin fails the start."""
    load_plugins(settings.guardrail_plugins)
    return GuardrailSelection(
        settings.input_guardrails,
        settings.output_guardrails,
        banned_terms=settings.banned_terms,
        max_input_tokens=settings.template_max_input_tokens,
        templates=TEMPLATES.values(),
    )


def check_prompt_size(
    selection: GuardrailSelection, template: Template, inputs: Sequence[str], loc: str
) -> None:
    """422 if any plain prompt is over the template's budget. Documents are never refused for
    size: a document over a model's window is the long-document path's business."""
    details = oversized_inputs(selection, template, inputs, loc)
    if details:
        first = details[0]
        raise AdmissionError(
            422,
            "input_too_long",
            f"{first['loc']}: {first['message']}"
            + (f" ({len(details)} items over the limit)" if len(details) > 1 else ""),
            details=details[:MAX_DETAILS],
        )


def oversized_inputs(
    selection: GuardrailSelection, template: Template, inputs: Sequence[str], loc: str
) -> list[dict[str, Any]]:
    """One detail ({loc, message, type}) per input over the template's token budget."""
    limit = selection.token_limit(template)
    if limit is None or template.summarizes:
        return []
    # The estimate is at most max(chars/4, 2/3 chars + 1): shorter texts need no counting.
    quick = max(0, (limit - 1) * 3 // 2)
    details: list[dict[str, Any]] = []
    for index, text in enumerate(inputs):
        if len(text) <= quick:
            continue
        tokens = estimate_tokens(text)
        if tokens > limit:
            details.append(
                {
                    "loc": loc.format(index=index),
                    "message": f"about {tokens} tokens; template {template.name!r} takes "
                    f"at most {limit}",
                    "type": "too_many_tokens",
                }
            )
    return details


@dataclass(frozen=True)
class Stored:
    """One job as it is written: input and params redacted, and the ingest findings."""

    input: str
    params: dict[str, Any]
    findings: list[dict[str, Any]]


def redact_jobs(
    selection: GuardrailSelection,
    settings: Settings,
    template: Template,
    jobs: Sequence[tuple[str, dict[str, Any]]],
) -> list[Stored]:
    """Each (input, params) as it is to be stored: every text that reaches a provider (the
    input, a chat's messages, the template's variables: llmq/guardrails/job_guard.py) redacted.
    Unchanged when redaction at ingest is off or the template's input chain has no redactor."""
    redactors = selection.redactors_for(template) if settings.redact_pii_at_ingest else []
    if not redactors:
        return [Stored(text, params, []) for text, params in jobs]
    # Items of a batch usually share one params object (its defaults): its texts are redacted
    # once, and the items keep sharing one (redacted) object, serialized once by the INSERT.
    # Keyed by identity; the value keeps the object alive so its id cannot be reused.
    by_params: dict[int, tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = {}
    stored = []
    for text, params in jobs:
        memo = by_params.get(id(params))
        if memo is None:
            guarded = guard_job(redactors, template, "", params, stop_at_block=False)
            kept = params if guarded.params == params else guarded.params
            memo = by_params[id(params)] = (params, kept, guarded.findings)
        _, kept, params_findings = memo
        guarded = guard_job(redactors, template, text, {}, stop_at_block=False)
        findings = [{**f, "stage": "ingest"} for f in (*guarded.findings, *params_findings)]
        stored.append(Stored(guarded.input, kept, findings))
    return stored


# ---------------------------------------------------------------------------------------------
# The OpenAI- and Anthropic-compatible routes: the same checks on each message of a chat job


def chat_ingest(selection: GuardrailSelection, settings: Settings) -> ChatIngest:
    """The size check and redaction above, for a conversation about to be stored as a job of
    the `chat` template. A text over the budget raises FieldError("input_too_long") naming the
    request's own parameter, which each API reports in its own way."""
    template = TEMPLATES["chat"]

    def ingest(
        conversation: Conversation, params: Sequence[str]
    ) -> tuple[str, list[dict[str, Any]]]:
        # Per text, as the worker's token-limit guardrail measures a stored conversation.
        too_long = oversized_inputs(selection, template, conversation.texts(), "{index}")
        if too_long:
            param = params[int(too_long[0]["loc"])]
            raise FieldError("input_too_long", param, f"{param}: {too_long[0]['message']}")
        [stored] = redact_jobs(selection, settings, template, [(conversation.encode(), {})])
        return stored.input, stored.findings

    return ingest


def text_redactor(selection: GuardrailSelection, settings: Settings) -> TextRedactor | None:
    """Redaction of one plain text with the `chat` template's redactors (for the strings of an
    uploaded batch file); None when redaction at ingest is off or there is no redactor."""
    redactors = selection.redactors_for(TEMPLATES["chat"]) if settings.redact_pii_at_ingest else []
    if not redactors:
        return None
    return lambda text: redact(redactors, text)

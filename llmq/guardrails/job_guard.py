"""Every piece of client text of a job that reaches a provider, and the one way it is guarded.

A job's text is more than its `input`: a chat's input holds a system prompt and messages
(llmq/chat.py), a template's variables are rendered into the prompt (llmq/templates.py), and a
JSON Schema's strings are quoted in the system prompt (llmq/execution/output_review.py). `job_texts`
names each of them; `guard_job` runs a guardrail chain over each and puts the results back. The API
runs it with the redactors before a row is written (llmq/admission/guard.py), the worker with the
whole input chain before the cache key and any provider call (llmq/execution/pipeline.py), so a
variable is redacted and blocked exactly like the same text given as `input`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from llmq.chat import ChatFormatError, Conversation, decode
from llmq.guardrails import Guardrail, run_chain
from llmq.templates import Template

# Where a text sits: ("input",), ("system",), ("messages", 0), ("params", "variables", "q"), ...
Path = tuple[str | int, ...]


@dataclass
class GuardedJob:
    input: str
    params: dict[str, Any]
    # Counts only, as on the job record; a finding outside the input names its `field`.
    findings: list[dict[str, Any]] = field(default_factory=list)
    blocked_by: str | None = None
    blocked_field: str | None = None  # e.g. "params.variables.question"; None: the input


def label(path: Path) -> str:
    return ".".join(str(part) for part in path)


def job_texts(
    template: Template, text: str, params: Mapping[str, Any]
) -> Iterator[tuple[Path, str]]:
    """(where, text) for every text of the job that reaches a provider: the input (a chat's
    system prompt and messages), then the params' texts."""
    conversation = _conversation(template, text)
    if conversation is None:
        yield ("input",), text
    else:
        if conversation.system is not None:
            yield ("system",), conversation.system
        for index, message in enumerate(conversation.messages):
            yield ("messages", index), message["content"]
    yield from _strings(("params", "variables"), params.get("variables"), numbers=True)
    # A schema's numbers are constraints (minimum, maxItems), not text: only its strings.
    yield from _strings(("params", "json_schema"), params.get("json_schema"), numbers=False)


def guard_job(
    guardrails: list[Guardrail],
    template: Template,
    text: str,
    params: Mapping[str, Any],
    *,
    stop_at_block: bool = True,
) -> GuardedJob:
    """Run `guardrails` over each text of the job; the job with redactions applied. The first
    block stops it (the texts are then returned unchanged), unless `stop_at_block` is False
    (redaction at ingest: blocking is the worker's decision, every text is still redacted)."""
    findings: list[dict[str, Any]] = []
    changed: dict[Path, str] = {}
    for path, value in job_texts(template, text, params):
        checked = run_chain(guardrails, value)
        where = {} if path[0] != "params" else {"field": label(path)}
        findings.extend({**asdict(f), **where} for f in checked.findings)
        if checked.blocked_by and stop_at_block:
            return GuardedJob(text, dict(params), findings, checked.blocked_by, where.get("field"))
        if checked.text != value:
            changed[path] = checked.text
    new_input, new_params = _apply(template, text, params, changed)
    return GuardedJob(new_input, new_params, findings)


def _conversation(template: Template, text: str) -> Conversation | None:
    if not template.chat:
        return None
    try:
        return decode(text)
    except ChatFormatError:
        return None  # checked as one text; rendering rejects it (bad_template)


def _strings(path: Path, value: Any, *, numbers: bool) -> Iterator[tuple[Path, str]]:
    """Each string under `value` (keys are structure, not text), and each number as text when
    `numbers` (a variable's number is rendered into the prompt and can be a card number)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings((*path, key), item, numbers=numbers)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings((*path, index), item, numbers=numbers)
    elif isinstance(value, str) or (
        numbers and isinstance(value, int | float) and not isinstance(value, bool)
    ):
        yield path, str(value)


def _apply(
    template: Template, text: str, params: Mapping[str, Any], changed: dict[Path, str]
) -> tuple[str, dict[str, Any]]:
    """The input and params with the changed texts in place (untouched ones keep their type)."""
    if not changed:
        return text, dict(params)
    conversation = _conversation(template, text)
    if conversation is None:
        text = changed.get(("input",), text)
    elif any(path[0] != "params" for path in changed):
        system = changed.get(("system",), conversation.system)
        messages = [
            {**m, "content": changed.get(("messages", i), m["content"])}
            for i, m in enumerate(conversation.messages)
        ]
        text = Conversation(system, messages).encode()
    out = dict(params)
    for path, value in changed.items():
        if path[0] != "params":
            continue
        root = str(path[1])
        if out[root] is params.get(root):
            out[root] = copy.deepcopy(params[root])  # never edit the caller's (shared) params
        target: Any = out
        for part in path[1:-1]:
            target = target[part]
        target[path[-1]] = value
    return text, out

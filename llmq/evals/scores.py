"""Offline scores of one output against the source it was made from: cheap enough for every
job of a pair, and meaningful without a reference answer.

- `output_chars`, `compression`: the output's length, and its length over the source's.
- `numbers_kept`: the share of the numbers in the output that also appear in the source (1.0 when
  the output has none); `numbers_invented`: how many do not. A summary must not invent numbers.
- `entities_kept` / `entities_invented`: the same for named entities, taken as capitalised words
  that do not start a sentence (a heuristic: no NER model needed).
- `json_valid`: 1.0 or 0.0, only when the job asked for JSON (and its schema, if it gave one).
- `guardrail_findings`: how many output guardrail findings the answer had.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

# 1,200 / 3.5 / 2026 / 40%: digits with inner separators; "1,200" and "1200" are the same number.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*")
_SENTENCE_END = frozenset(".!?:;")
# Words written capitalised for grammar, not because they name something.
_NOT_NAMES = frozenset(
    [
        "I",
        "A",
        "An",
        "The",
        "This",
        "That",
        "These",
        "Those",
        "It",
        "Its",
        "We",
        "Our",
        "You",
        "Your",
        "He",
        "She",
        "They",
        "Their",
        "There",
        "Here",
        "In",
        "On",
        "At",
        "Of",
        "For",
        "And",
        "But",
        "Or",
        "If",
        "When",
        "While",
        "As",
        "By",
        "To",
        "From",
        "With",
        "Without",
        "After",
        "Before",
        "Over",
        "Under",
        "Summary",
        "Key",
        "Overall",
        "Also",
        "However",
        "Both",
        "Each",
        "All",
        "Most",
        "Some",
        "No",
        "Not",
    ]
)


def numbers(text: str) -> set[str]:
    """The numbers in `text`, normalised: thousands separators dropped, trailing zeros of a
    decimal kept as written (3.50 and 3.5 differ, as a reader would notice)."""
    found = set()
    for match in _NUMBER.finditer(text):
        token = match.group()
        # "1,200" is a thousands separator; "3,5" is a decimal comma only without a 3-digit group.
        if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", token):
            token = token.replace(",", "")
        found.add(token.replace(",", "."))
    return found


def entities(text: str, *, openers: bool = False) -> set[str]:
    """Capitalised words that do not open a sentence (with `openers`, those too: a name in the
    source counts wherever it stands), minus common function words."""
    found = set()
    for match in _WORD.finditer(text):
        word = match.group()
        if not word[0].isupper() or word in _NOT_NAMES:
            continue
        if not openers and _opens_sentence(text, match.start()):
            continue  # the first word of a sentence (or of the text) is capitalised anyway
        found.add(word.strip("'\u2019-"))
    return found


def _opens_sentence(text: str, start: int) -> bool:
    """Only whitespace back to the text's start, a sentence end or a line break."""
    i = start - 1
    while i >= 0 and text[i].isspace():
        if text[i] == "\n":
            return True
        i -= 1
    return i < 0 or text[i] in _SENTENCE_END


def _kept(output: set[str], source: set[str]) -> tuple[float, int]:
    """(share of `output` also in `source`, how many are not); (1.0, 0) for nothing claimed."""
    if not output:
        return 1.0, 0
    invented = len(output - source)
    return (len(output) - invented) / len(output), invented


def json_valid(output: str, schema: Mapping[str, Any] | None) -> bool:
    try:
        value = json.loads(output)
    except ValueError:
        return False
    if schema is None:
        return True
    return bool(jsonschema.validators.validator_for(schema)(schema).is_valid(value))


def score(
    output: str,
    source: str,
    *,
    wants_json: bool = False,
    schema: Mapping[str, Any] | None = None,
    findings: int = 0,
) -> dict[str, float]:
    """Every score of one output, as floats (counts included) keyed by name."""
    numbers_kept, numbers_invented = _kept(numbers(output), numbers(source))
    entities_kept, entities_invented = _kept(entities(output), entities(source, openers=True))
    scores = {
        "output_chars": float(len(output)),
        "compression": len(output) / max(len(source), 1),
        "numbers_kept": numbers_kept,
        "numbers_invented": float(numbers_invented),
        "entities_kept": entities_kept,
        "entities_invented": float(entities_invented),
        "guardrail_findings": float(findings),
    }
    if wants_json:
        scores["json_valid"] = 1.0 if json_valid(output, schema) else 0.0
    return scores


def output_findings(guardrails: list[dict[str, Any]] | None) -> int:
    """The number of output-stage guardrail findings recorded on a job's outcome."""
    return sum(
        int(finding.get("count", 1))
        for finding in guardrails or []
        if finding.get("stage") == "output"
    )

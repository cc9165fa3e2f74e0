"""An uploaded OpenAI batch input file as it is stored: with personal data already redacted.

A file can sit in Postgres for any length of time before a batch uses it (or for ever, if none
does), so it is never stored raw. Each JSON line keeps its structure: every string in it is
redacted except the fields that address the request (custom_id, method, url, body.model), and
the line's findings (counts only) are kept in the line under FINDINGS_KEY until the batch's jobs
take them over. Downloading the file gives the redacted lines without that key. Lines with
nothing to redact are stored byte for byte; a line that is not JSON is redacted as plain text
(it fails any batch anyway, with its line number, so the numbering is kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .common import TextRedactor

FINDINGS_KEY = "llmq_ingest_findings"
# Strings that say where a request goes or which one it is: redacting them would change it.
_ADDRESSING = {("custom_id",), ("method",), ("url",), ("body", "model")}
# What str.splitlines() splits on; parse_batch_file numbers lines the same way.
_LINE_ENDS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@dataclass(frozen=True)
class StoredFile:
    content: bytes  # what is stored: redacted, with each line's findings
    size: int  # its size as downloaded (without the findings)


def redact_file(content: bytes, redact: TextRedactor | None) -> StoredFile:
    """The file to store. With `redact` None (redaction at ingest off) lines are kept as sent,
    except that a FINDINGS_KEY a client put in a line is dropped: only ours is trusted."""
    # surrogateescape: a file that is not UTF-8 (refused when a batch is created) keeps its
    # bytes, while any readable text in it is still redacted.
    text = content.decode("utf-8", errors="surrogateescape")
    stored: list[str] = []
    served: list[str] = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip(_LINE_ENDS)
        end = line[len(body) :]
        kept, shown = _redact_line(body, redact)
        stored.append(kept + end)
        served.append(shown + end)
    return StoredFile(
        content="".join(stored).encode("utf-8", errors="surrogateescape"),
        size=len("".join(served).encode("utf-8", errors="surrogateescape")),
    )


def served_content(stored: bytes) -> bytes:
    """The stored file as a client downloads it: the redacted lines, without our findings."""
    if FINDINGS_KEY.encode() not in stored:
        return stored
    return redact_file(stored, None).content


def _redact_line(line: str, redact: TextRedactor | None) -> tuple[str, str]:
    """(line to store, line to serve) for one line without its line break."""
    if not line.strip() or (redact is None and FINDINGS_KEY not in line):
        return line, line
    try:
        request = json.loads(line)
    except ValueError:
        shown = redact(line)[0] if redact is not None else line
        return shown, shown
    forged = isinstance(request, dict) and FINDINGS_KEY in request
    if forged:
        del request[FINDINGS_KEY]
    findings: list[dict[str, Any]] = []
    if redact is not None:
        request = _redact_strings(request, redact, findings, ())
    if not findings and not forged:
        return line, line
    # ASCII-escaped, so no character of a redacted text can make a line break of its own.
    shown = json.dumps(request)
    if not findings:
        return shown, shown
    return json.dumps({**request, FINDINGS_KEY: findings}), shown


def _redact_strings(
    value: Any, redact: TextRedactor, findings: list[dict[str, Any]], path: tuple[Any, ...]
) -> Any:
    if isinstance(value, str):
        if path in _ADDRESSING:
            return value
        text, found = redact(value)
        findings.extend(found)
        return text
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact, findings, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact, findings, (*path, i)) for i, v in enumerate(value)]
    return value

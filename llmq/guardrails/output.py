"""Output checks: destructive commands in model output are blocked; empty output is rejected."""

from __future__ import annotations

import re

from .base import Finding, Verdict

_I = re.IGNORECASE
UNSAFE: dict[str, re.Pattern[str]] = {
    "drop_table": re.compile(r"\bDROP\s+(TABLE|DATABASE|SCHEMA)\b", _I),
    "truncate_table": re.compile(r"\bTRUNCATE\s+TABLE\b", _I),
    "delete_without_where": re.compile(r"\bDELETE\s+FROM\s+[\w.\"`]+\s*(;|$)", _I | re.M),
    "rm_rf_root": re.compile(
        r"\brm\s+-(?:rf|fr|r\s+-f|f\s+-r)\s+(?:--no-preserve-root\s+)?"
        r"(/\*?|~/?)(?=\s|$|;)",
        _I | re.M,
    ),
    "chmod_777": re.compile(r"\bchmod\s+(-R\s+)?777\b", _I),
    "mkfs": re.compile(r"\bmkfs(\.\w+)?\s+/dev/", _I),
    "dd_to_disk": re.compile(r"\bdd\s+if=\S+\s+of=/dev/(sd|nvme|hd|xvd)", _I),
    "fork_bomb": re.compile(r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:"),
    "eval_encoded_payload": re.compile(
        r"\b(eval|exec)\s*\(\s*(base64\.b64decode|atob|bytes\.fromhex|codecs\.decode|"
        r"__import__\(['\"]base64)",
        _I,
    ),
    "pipe_to_shell": re.compile(r"\b(curl|wget)\s+[^|\n]+\|\s*(sudo\s+)?(ba|z)?sh\b", _I),
}


class UnsafeOutputGuard:
    name = "unsafe_output"

    def check(self, text: str) -> Verdict:
        for rule, pattern in UNSAFE.items():
            if pattern.search(text):
                full = f"{self.name}.{rule}"
                return Verdict(text=text, findings=(Finding(full, "block"),), blocked_by=full)
        return Verdict(text=text)


class EmptyOutputGuard:
    name = "empty_output"

    def check(self, text: str) -> Verdict:
        if not text.strip():
            return Verdict(text=text, findings=(Finding(self.name, "block"),), blocked_by=self.name)
        return Verdict(text=text)

"""Redacts personal data before a provider (or anything else) sees it: emails, phone numbers,
payment cards (Luhn-checked), US SSNs and IBANs (mod-97-checked). Findings carry counts only."""

from __future__ import annotations

import re
from collections.abc import Callable

from .base import Finding, Verdict

EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes.
CARD = re.compile(r"(?<![\d\-])(?:\d[ \-]?){12,18}\d(?![\d\-])")
SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# International (+CC ...) or North American ((555) 555-0142, 555-555-0142, 555.555.0142).
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}|\d{3}[.\-]\d{3}[.\-]\d{4})(?![\w\-])"
)


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


class PIIRedactor:
    name = "pii"

    def check(self, text: str) -> Verdict:
        findings: list[Finding] = []

        def redact(
            pattern: re.Pattern[str],
            label: str,
            rule: str,
            valid: Callable[[str], bool] = lambda _: True,
        ) -> None:
            nonlocal text
            count = 0

            def replace(match: re.Match[str]) -> str:
                nonlocal count
                if not valid(match.group(0)):
                    return match.group(0)
                count += 1
                return label

            text = pattern.sub(replace, text)
            if count:
                findings.append(Finding(f"pii.{rule}", "redact", count))

        # Order matters: the most specific shapes first, so a card is not half-eaten as a phone.
        redact(EMAIL, "[EMAIL]", "email")
        redact(IBAN, "[IBAN]", "iban", iban_valid)
        redact(CARD, "[CARD]", "card", lambda s: luhn_valid(re.sub(r"[ \-]", "", s)))
        redact(SSN, "[SSN]", "ssn")
        redact(PHONE, "[PHONE]", "phone", lambda s: 10 <= sum(c.isdigit() for c in s) <= 15)
        return Verdict(text=text, findings=tuple(findings))

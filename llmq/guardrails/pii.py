"""Redacts personal data before a provider (or anything else) sees it: emails, phone numbers,
payment cards (Luhn-checked), US SSNs and IBANs (mod-97-checked). Findings carry counts only.

Every numeric detector is deliberately shape-strict (and checksum-validated where a checksum
exists) so that dates, order numbers, versions, prices and ISBNs in ordinary documents survive.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .base import Finding, Verdict

EMAIL = re.compile(
    r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])"
)

# Uppercase only: IBANs are printed that way, and lowercase words followed by digits are common.
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.ASCII)

# A run of digits joined by single spaces or dashes; which part (if any) is a card is decided in
# code (grouping shape + Luhn), because a regex alone cannot prefer the right sub-run.
# ASCII digits only (re.ASCII): a stray non-ASCII digit next to a card must not hide it.
_DIGIT_RUN = re.compile(r"\d+(?:[ \-]\d+)*", re.ASCII)
_SEPARATOR = re.compile(r"([ \-])")

SSN = re.compile(r"(?<![\w\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])", re.ASCII)

# International numbers must carry the +CC prefix; North-American ones need the 3-3-4 shape with
# one consistent separator (or "(AAA) "), and NANP rules (area/exchange start 2-9). Bare digit runs
# are never phones: they are too often order numbers or IDs.
PHONE = re.compile(
    r"(?<![\w+\-.])(?:"
    r"\+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?[ .\-]?\d{1,14}(?:[ .\-]\d{1,10}){0,5}"
    r"|(?:1[ .\-]?)?\([2-9]\d{2}\)[ .\-]?[2-9]\d{2}[ .\-]\d{4}"
    r"|(?:1[ .\-])?[2-9]\d{2}(?P<sep>[ .\-])[2-9]\d{2}(?P=sep)\d{4}"
    r")(?![\w\-]|\.\d)",
    re.ASCII,
)
_PHONE_GROUP = re.compile(r"\d+", re.ASCII)

Replace = tuple[str, int]  # (replacement text, number of items redacted)

# IBAN lengths by country (SWIFT IBAN registry). Countries not listed fall back to the generic
# 15-34 length so a newly added country is still caught; the mod-97 check does the real work.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


def luhn_valid(digits: str) -> bool:
    """True if `digits` (13-19 ASCII digits, nothing else) passes the Luhn checksum."""
    if not 13 <= len(digits) <= 19 or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(s: str) -> bool:
    """True if `s` (spaces allowed) is a well-formed IBAN whose mod-97 check equals 1."""
    compact = s.replace(" ", "").upper()
    if not compact.isascii() or not _IBAN_SHAPE.fullmatch(compact):
        return False
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    # int(c, 36) maps A..Z to 10..35 as ISO 13616 requires; digits map to themselves.
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _isbn13_valid(digits: str) -> bool:
    # A Luhn-valid ISBN-13 is a coincidence, not a card: bibliographies must survive intact.
    if len(digits) != 13 or not digits.startswith(("978", "979")):
        return False
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return total % 10 == 0


def _card_shape(lengths: list[int]) -> bool:
    """Groupings cards are actually written in: one block, 4-4-4-4(-3), Amex 4-6-5, Diners 4-6-4."""
    if len(lengths) == 1:
        return True
    if all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4:
        return True
    return lengths in ([4, 6, 5], [4, 6, 4])


# Major-network prefixes (Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Diners 30/36/38,
# Discover/UnionPay 6, JCB 35), required only for grouped sub-runs: a row of years or amounts
# such as "2019 2020 2021 2022" is Luhn-valid one time in ten.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[04678]|35|6")


def _is_card(groups: list[str], whole_run: bool) -> bool:
    digits = "".join(groups)
    if not 13 <= len(digits) <= 19 or not _card_shape([len(g) for g in groups]):
        return False
    if len(groups) > 1 and not whole_run and not _CARD_PREFIX.match(digits):
        return False
    return luhn_valid(digits) and not _isbn13_valid(digits)


def _redact_cards_in_run(run: str) -> tuple[str, int]:
    """Redact every card in a digit run: the whole run ("4111 1111 1111 1111"), or a part of it
    ("4111 1111 1111 1111 12/27", where the expiry month joins the run)."""
    if len(run) < 13:  # a card has 13+ digits: most runs (years, amounts) end here
        return run, 0
    parts = _SEPARATOR.split(run)
    groups, seps = parts[0::2], parts[1::2]
    out: list[str] = []
    count = 0
    i = 0
    while i < len(groups):
        best = -1
        length = 0
        for j in range(i, len(groups)):
            if j > i and (
                seps[j - 1] != seps[i]  # one card uses one separator style throughout
                or len(groups[i]) != 4  # every grouped layout starts with 4 digits...
                or len(groups[j - 1]) not in (4, 6)  # ...and has 4- or 6-digit inner groups
            ):
                break
            length += len(groups[j])
            if length > 19:
                break
            whole = i == 0 and j == len(groups) - 1
            if length >= 13 and _is_card(groups[i : j + 1], whole):
                best = j  # keep looking: prefer the longest valid card (19-digit PANs)
        if best >= 0:
            out.append("[CARD]")
            count += 1
            i = best + 1
        else:
            out.append(groups[i])
            i += 1
        if i - 1 < len(seps):
            out.append(seps[i - 1])
    return "".join(out), count


def _redact_phone(match: str) -> tuple[str, int]:
    end = _phone_span(match)
    return ("[PHONE]" + match[end:], 1) if end else (match, 0)


def _phone_span(match: str) -> int:
    """How much of a PHONE match is the number (0: none). A greedy international match can run
    into a following figure ("+44 20 7946 0958 2024 ..."), so it is cut back to at most 15 digits
    at a group boundary instead of being dropped."""
    if not match.startswith("+"):
        digits = sum(len(g) for g in _PHONE_GROUP.findall(match))
        return len(match) if digits in (10, 11) else 0
    total = 0
    end = 0
    for group in _PHONE_GROUP.finditer(match):
        if total + len(group.group()) > 15:  # E.164: at most 15 digits including the country code
            break
        total += len(group.group())
        end = group.end()
    return end if total >= 10 else 0


def _label(label: str, valid: Callable[[str], bool] | None = None) -> Callable[[str], Replace]:
    def replace(match: str) -> Replace:
        return (label, 1) if valid is None or valid(match) else (match, 0)

    return replace


# (rule, candidate pattern, match -> (replacement, items redacted)). Order matters: emails and IBANs
# contain digit runs that would otherwise be read as cards or phones, and cards go before phones
# so that a card is never half-eaten as a phone number.
DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], Replace]], ...] = (
    ("pii.email", EMAIL, _label("[EMAIL]")),
    ("pii.iban", IBAN, _label("[IBAN]", iban_valid)),
    ("pii.card", _DIGIT_RUN, _redact_cards_in_run),
    ("pii.ssn", SSN, _label("[SSN]")),
    ("pii.phone", PHONE, _redact_phone),
)


# Every detector needs an "@" or an ASCII digit: text with neither is skipped in one scan (most
# items of a big batch at ingest).
_CANDIDATE = re.compile(r"[@0-9]")
# What each detector's match necessarily contains, as a pattern that starts with a single
# character set (which re scans for quickly; a leading lookbehind or repeat is tried at every
# position). A detector whose candidate is absent from the original text is skipped: redactions
# only insert brackets and letters, so they can split a candidate but never create one.
_CANDIDATES: dict[str, re.Pattern[str] | None] = {
    "pii.email": re.compile(r"@"),
    "pii.iban": re.compile(r"[0-9][0-9][0-9A-Z ]{11,}"),  # check digits, then 11+ of the BBAN
    "pii.card": re.compile(r"[0-9][0-9 \-]{11,}[0-9]"),  # 13+ digits joined by " " or "-"
    "pii.ssn": re.compile(r"[0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][0-9][0-9]"),
    "pii.phone": None,  # the digit span below is its candidate
}
# Cards, SSNs and phone numbers all contain a span of 10+ characters of digits and separators:
# one scan rules out all three in the common case.
_DIGIT_SPAN = re.compile(r"[0-9][0-9 ().\-]{8,}[0-9]")
_NEEDS_DIGIT_SPAN = frozenset({"pii.card", "pii.ssn", "pii.phone"})


class PIIRedactor:
    name = "pii"
    redacts = True  # also runs at ingest, before the text is stored (llmq.guardrails.selection)

    def check(self, text: str) -> Verdict:
        if _CANDIDATE.search(text) is None:
            return Verdict(text=text)
        original = text
        has_span = _DIGIT_SPAN.search(original) is not None
        findings: list[Finding] = []
        for rule, pattern, redact in DETECTORS:
            if rule in _NEEDS_DIGIT_SPAN and not has_span:
                continue
            candidate = _CANDIDATES[rule]
            if candidate is not None and candidate.search(original) is None:
                continue
            count = 0

            def replace(match: re.Match[str], redact: Callable[[str], Replace] = redact) -> str:
                nonlocal count
                replacement, found = redact(match.group(0))
                count += found
                return replacement

            text = pattern.sub(replace, text)
            if count:
                findings.append(Finding(rule, "redact", count))
        return Verdict(text=text, findings=tuple(findings))

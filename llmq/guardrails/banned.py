"""Blocks inputs that contain configured terms (whole words, case-insensitive)."""

from __future__ import annotations

import re

from .base import Finding, Verdict


def _term_pattern(term: str) -> str:
    # Inner whitespace matches any whitespace run, so "project  x" or a line break still counts.
    return r"\s+".join(re.escape(word) for word in term.split())


class BannedTermsGuard:
    name = "banned_terms"

    def __init__(self, terms: list[str]) -> None:
        cleaned = sorted({t.strip() for t in terms if t.strip()}, key=lambda t: (-len(t), t))
        # (?<!\w)/(?!\w) rather than \b: \b never matches next to a term that starts or ends in
        # punctuation ("c++", "@handle").
        self._pattern = (
            re.compile(
                r"(?<!\w)(?:" + "|".join(_term_pattern(t) for t in cleaned) + r")(?!\w)",
                re.IGNORECASE,
            )
            if cleaned
            else None
        )

    def check(self, text: str) -> Verdict:
        if self._pattern is None:
            return Verdict(text=text)
        count = sum(1 for _ in self._pattern.finditer(text))
        if count:
            # The finding names the rule only: the configured terms may themselves be sensitive.
            return Verdict(
                text=text, findings=(Finding(self.name, "block", count),), blocked_by=self.name
            )
        return Verdict(text=text)

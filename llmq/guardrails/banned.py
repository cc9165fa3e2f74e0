"""Blocks inputs that contain configured terms (whole words, case-insensitive)."""

from __future__ import annotations

import re

from .base import Finding, Verdict


class BannedTermsGuard:
    name = "banned_terms"

    def __init__(self, terms: list[str]) -> None:
        cleaned = [t.strip() for t in terms if t.strip()]
        self._pattern = (
            re.compile(r"\b(" + "|".join(re.escape(t) for t in cleaned) + r")\b", re.IGNORECASE)
            if cleaned
            else None
        )

    def check(self, text: str) -> Verdict:
        if self._pattern is not None and self._pattern.search(text):
            return Verdict(text=text, findings=(Finding(self.name, "block"),), blocked_by=self.name)
        return Verdict(text=text)

"""Blocks inputs larger than a token budget (estimated: see llmq.cost.tokens)."""

from __future__ import annotations

from llmq.cost.tokens import estimate_tokens

from .base import Finding, Verdict


class TokenLimitGuard:
    name = "token_limit"

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 1:
            # A budget of zero would block every job: almost certainly a configuration mistake.
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens = max_tokens

    def check(self, text: str) -> Verdict:
        if estimate_tokens(text) > self.max_tokens:
            return Verdict(text=text, findings=(Finding(self.name, "block"),), blocked_by=self.name)
        return Verdict(text=text)

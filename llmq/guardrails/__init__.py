"""Guardrails by name: the input and output chains are configured as lists of these names."""

from __future__ import annotations

from .banned import BannedTermsGuard
from .base import ChainResult, Finding, Guardrail, Verdict, run_chain
from .injection import PromptInjectionGuard
from .limits import TokenLimitGuard
from .output import EmptyOutputGuard, UnsafeOutputGuard
from .pii import PIIRedactor

GUARDRAIL_NAMES = (
    "prompt_injection",
    "pii",
    "token_limit",
    "banned_terms",
    "unsafe_output",
    "empty_output",
)

__all__ = [
    "GUARDRAIL_NAMES",
    "ChainResult",
    "Finding",
    "Guardrail",
    "Verdict",
    "build_chain",
    "run_chain",
]


def build_chain(
    names: list[str],
    *,
    max_input_tokens: int | None = None,
    banned_terms: list[str] | None = None,
) -> list[Guardrail]:
    chain: list[Guardrail] = []
    for name in names:
        if name == "prompt_injection":
            chain.append(PromptInjectionGuard())
        elif name == "pii":
            chain.append(PIIRedactor())
        elif name == "token_limit":
            if max_input_tokens is not None:
                chain.append(TokenLimitGuard(max_input_tokens))
        elif name == "banned_terms":
            chain.append(BannedTermsGuard(banned_terms or []))
        elif name == "unsafe_output":
            chain.append(UnsafeOutputGuard())
        elif name == "empty_output":
            chain.append(EmptyOutputGuard())
        else:
            raise ValueError(f"unknown guardrail: {name}")
    return chain

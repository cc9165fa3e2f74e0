"""Guardrails by name: the input and output chains are configured as lists of these names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .banned import BannedTermsGuard
from .base import Action, ChainResult, Finding, Guardrail, Verdict, run_chain
from .injection import PromptInjectionGuard
from .limits import TokenLimitGuard
from .output import EmptyOutputGuard, UnsafeOutputGuard
from .pii import PIIRedactor, iban_valid, luhn_valid


@dataclass(frozen=True)
class ChainOptions:
    """Settings some guardrails need; the others ignore them."""

    max_input_tokens: int | None = None
    banned_terms: tuple[str, ...] = ()


GuardrailFactory = Callable[[ChainOptions], Guardrail]


def _token_limit(options: ChainOptions) -> Guardrail:
    if options.max_input_tokens is None:
        # Silently skipping a configured limit would let oversized inputs through unnoticed.
        raise ValueError("guardrail token_limit needs max_input_tokens")
    return TokenLimitGuard(options.max_input_tokens)


INPUT_GUARDRAILS: dict[str, GuardrailFactory] = {
    "prompt_injection": lambda _: PromptInjectionGuard(),
    "pii": lambda _: PIIRedactor(),
    "token_limit": _token_limit,
    "banned_terms": lambda options: BannedTermsGuard(list(options.banned_terms)),
}
OUTPUT_GUARDRAILS: dict[str, GuardrailFactory] = {
    "unsafe_output": lambda _: UnsafeOutputGuard(),
    "empty_output": lambda _: EmptyOutputGuard(),
}
GUARDRAIL_NAMES: tuple[str, ...] = (*INPUT_GUARDRAILS, *OUTPUT_GUARDRAILS)


def build_chain(
    names: list[str],
    *,
    max_input_tokens: int | None = None,
    banned_terms: list[str] | None = None,
) -> list[Guardrail]:
    """Guardrails for `names`, in order. Any registered name may appear in either chain (e.g.
    "pii" on output); the two registries only document where each is meant to run."""
    options = ChainOptions(max_input_tokens, tuple(banned_terms or ()))
    chain: list[Guardrail] = []
    for name in names:
        factory = INPUT_GUARDRAILS.get(name) or OUTPUT_GUARDRAILS.get(name)
        if factory is None:
            raise ValueError(f"unknown guardrail: {name}")
        chain.append(factory(options))
    return chain


__all__ = [
    "GUARDRAIL_NAMES",
    "INPUT_GUARDRAILS",
    "OUTPUT_GUARDRAILS",
    "Action",
    "BannedTermsGuard",
    "ChainOptions",
    "ChainResult",
    "EmptyOutputGuard",
    "Finding",
    "Guardrail",
    "GuardrailFactory",
    "PIIRedactor",
    "PromptInjectionGuard",
    "TokenLimitGuard",
    "UnsafeOutputGuard",
    "Verdict",
    "build_chain",
    "iban_valid",
    "luhn_valid",
    "run_chain",
]

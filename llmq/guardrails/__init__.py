"""Guardrails by name: the input and output chains are configured as lists of these names."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

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
Stage = Literal["input", "output"]


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
# Built-in names cannot be replaced by a plugin: a typo in a plugin must not silently swap out
# the PII redactor.
BUILT_IN_NAMES = frozenset(GUARDRAIL_NAMES)


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


_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def register_guardrail(
    name: str, guardrail: Guardrail | GuardrailFactory, *, stage: Stage = "input"
) -> None:
    """Make a third-party guardrail available by `name` to the input or output chain settings
    and to templates. `guardrail` is either a ready object with `name` and `check(text)`, or a
    factory taking ChainOptions (for guardrails that need the token budget or banned terms)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"guardrail name {name!r} must be lower_snake_case (a-z, 0-9, _)")
    if name in BUILT_IN_NAMES:
        raise ValueError(f"guardrail {name!r} is built in and cannot be replaced")
    other = OUTPUT_GUARDRAILS if stage == "input" else INPUT_GUARDRAILS
    if name in other:
        raise ValueError(f"guardrail {name!r} is already registered for the other stage")
    if callable(getattr(guardrail, "check", None)):
        obj = cast(Guardrail, guardrail)
        factory: GuardrailFactory = lambda _options: obj  # noqa: E731
    elif callable(guardrail):
        factory = guardrail
    else:
        raise TypeError("a guardrail needs a check(text) method (or be a factory returning one)")
    (INPUT_GUARDRAILS if stage == "input" else OUTPUT_GUARDRAILS)[name] = factory


def unregister_guardrail(name: str) -> None:
    if name in BUILT_IN_NAMES:
        raise ValueError(f"guardrail {name!r} is built in and cannot be removed")
    INPUT_GUARDRAILS.pop(name, None)
    OUTPUT_GUARDRAILS.pop(name, None)


def load_plugins(modules: list[str]) -> None:
    """Import each module; a plugin module calls register_guardrail at import time."""
    for module in modules:
        importlib.import_module(module)


def registered_names() -> tuple[str, ...]:
    return (*INPUT_GUARDRAILS, *OUTPUT_GUARDRAILS)


__all__ = [
    "BUILT_IN_NAMES",
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
    "load_plugins",
    "luhn_valid",
    "register_guardrail",
    "registered_names",
    "run_chain",
    "unregister_guardrail",
]

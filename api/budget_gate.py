"""Refuse a submission whose cost estimate does not fit in the tenant's budget (HTTP 402).

Estimate (documented in the README): for each item, the prompt tokens (the template's own text
plus the input, counted by llmq.tokens.estimate_tokens) plus the item's max_tokens of output,
priced at the chain's first configured link: the link a job tries first, and the only one it
uses when nothing fails. Tenants without a budget skip all of this (no cost on the hot path).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from llmq import ledger
from llmq.budgets import check_submission, estimate_batch, first_configured_link
from llmq.pricing import load_price_table
from llmq.providers.base import Provider
from llmq.providers.registry import build_providers
from llmq.settings import Settings
from llmq.templates import Template
from llmq.tokens import estimate_tokens

from .errors import ApiError

_providers: dict[int, dict[str, Provider]] = {}


def _configured(settings: Settings) -> dict[str, Provider]:
    # Built once per settings object: the same is_configured() the worker consults.
    providers = _providers.get(id(settings))
    if providers is None:
        providers = _providers[id(settings)] = build_providers(settings)
    return providers


def enforce_budget(
    engine: Engine,
    settings: Settings,
    tenant_id: uuid.UUID,
    template: Template,
    chain: Sequence[str],
    items: Sequence[tuple[str, dict[str, Any]]],
) -> None:
    """`items` are (input, params) pairs. Raises ApiError(402) when the estimate does not fit."""
    if ledger.get_budget(engine, tenant_id) is None:
        return
    providers = _configured(settings)
    link = first_configured_link(
        chain, lambda name: name in providers and providers[name].is_configured()
    )
    overhead: dict[int, int] = {}
    sized = []
    for text, params in items:
        key = id(params)
        if key not in overhead:
            shell = template.render("", params)
            overhead[key] = estimate_tokens(shell.user) + estimate_tokens(shell.system or "")
        max_tokens = int(params.get("max_tokens") or settings.max_output_tokens)
        sized.append((overhead[key] + estimate_tokens(text), max_tokens))
    estimate = estimate_batch(load_price_table(settings.pricing_file), link, sized)
    if estimate is None:
        return  # an unpriced model cannot be estimated; the worker still enforces the limits
    shortfall = check_submission(engine, tenant_id, estimate)
    if shortfall is not None:
        raise ApiError(
            402,
            "budget_exceeded",
            f"submission refused: {shortfall.message()} ({link}, {len(items)} item(s))",
            details=[{**shortfall.details(), "link": link, "items": len(items)}],
        )

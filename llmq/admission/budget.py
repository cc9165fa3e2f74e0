"""Refuse a submission whose cost estimate does not fit in the tenant's budget (HTTP 402).

Estimate (documented in docs/cost.md): for each item, the prompt tokens (the template's own text
plus the input, counted by llmq.cost.tokens.estimate_tokens) plus the item's max_tokens of output,
priced at the chain's first configured link: the link a job tries first, and the only one it
uses when nothing fails. An item whose short-input route applies (llmq/execution/routing.py, the
same decision as the worker's, on the submitted text) is priced at the route's cheaper link instead.
Tenants without a budget skip all of this (no cost on the hot path).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from llmq.cost.budgets import estimate_batch, first_configured_link
from llmq.cost.pricing import load_price_table
from llmq.cost.tokens import estimate_tokens
from llmq.errors import JobErrorCode
from llmq.execution import routing
from llmq.providers.base import Provider
from llmq.providers.registry import build_providers
from llmq.settings import Settings
from llmq.templates import Template

from .errors import AdmissionError
from .records import AdmissionRecords

_providers: dict[int, dict[str, Provider]] = {}


def _configured(settings: Settings) -> dict[str, Provider]:
    # Built once per settings object: the same is_configured() the worker consults.
    providers = _providers.get(id(settings))
    if providers is None:
        providers = _providers[id(settings)] = build_providers(settings)
    return providers


def enforce_budget(
    records: AdmissionRecords,
    settings: Settings,
    tenant_id: uuid.UUID,
    template: Template,
    chain: Sequence[str],
    items: Sequence[tuple[str, dict[str, Any]]],
) -> None:
    """`items` are (input, params) pairs. Raises AdmissionError(402) when the estimate does not
    fit."""
    if not records.has_budget(tenant_id):
        return
    providers = _configured(settings)

    def configured(name: str) -> bool:
        return name in providers and providers[name].is_configured()

    link = first_configured_link(chain, configured)
    overhead: dict[int, int] = {}
    sized: dict[str, list[tuple[int, int]]] = defaultdict(list)  # first link -> items
    for text, params in items:
        key = id(params)
        if key not in overhead:
            shell = template.render("", params)
            overhead[key] = estimate_tokens(shell.user) + estimate_tokens(shell.system or "")
        max_tokens = int(params.get("max_tokens") or settings.max_output_tokens)
        input_tokens = estimate_tokens(text)
        first = link
        if routing.PARAM in params:
            first = first_configured_link(
                routing.choose_chain(chain, params, input_tokens).links, configured
            )
        sized[first].append((overhead[key] + input_tokens, max_tokens))
    prices = load_price_table(settings.pricing_file)
    estimate = Decimal(0)
    for first, group in sized.items():
        part = estimate_batch(prices, first, group)
        if part is None:
            return  # an unpriced model cannot be estimated; the worker still enforces the limits
        estimate += part
    shortfall = records.budget_shortfall(tenant_id, estimate)
    if shortfall is not None:
        routed = sum(len(group) for first, group in sized.items() if first != link)
        short = f"; {routed} short at a cheaper link" if routed else ""
        raise AdmissionError(
            402,
            JobErrorCode.BUDGET_EXCEEDED,  # the code a job ends with when the worker refuses
            f"submission refused: {shortfall.message()} ({link}, {len(items)} item(s){short})",
            details=[
                {
                    **shortfall.details(),
                    "link": link,
                    "items": len(items),
                    **({"short_input_items": routed} if routed else {}),
                }
            ],
        )

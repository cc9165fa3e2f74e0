"""Token prices and cost arithmetic (exact decimals, never floats).

The shipped table is `llmq/data/pricing.json` (versioned, with the date it was checked and an
effective date per entry); a user file (LLMQ_PRICING_FILE) is merged over it, model by model.
A model missing from the table costs None ("unknown"), never 0 and never a crash; each such call
is counted (`llmq_missing_price_total`) and logged once where its attempt is recorded
(llmq/telemetry/hooks.py), so this module stays arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal


@dataclass(frozen=True)
class ModelPrice:
    input: Decimal
    output: Decimal
    cached_input: Decimal
    context_window: int | None
    effective_date: str
    # Some models bill the whole request at higher rates once the prompt passes a threshold.
    long_prompt_threshold: int | None = None
    long_prompt: Rates | None = None

    def rates(self, prompt_tokens: int) -> Rates:
        if (
            self.long_prompt is not None
            and self.long_prompt_threshold is not None
            and prompt_tokens > self.long_prompt_threshold
        ):
            return self.long_prompt
        return Rates(self.input, self.output, self.cached_input)


@dataclass(frozen=True)
class PriceTable:
    version: str
    models: dict[str, ModelPrice]
    checked: str = ""
    # The providers' Batch API rates (the provider_batch lane), a table of the same shape.
    batch_models: dict[str, ModelPrice] = field(default_factory=dict)

    def get(self, link: str) -> ModelPrice | None:
        return self.models.get(link)

    def batch(self) -> PriceTable:
        """The prices of calls made through a provider's Batch API: its models, same arithmetic."""
        return PriceTable(version=f"{self.version}/batch", models=self.batch_models)

    def cost(
        self, link: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> Decimal | None:
        """USD for one call, or None when the model is unpriced (tokens are still recorded).

        `input_tokens` includes the cached ones (as both providers report after our parsing);
        those are billed at the cached-input rate instead."""
        price = self.models.get(link)
        if price is None:
            return None  # counted and logged once where the attempt is recorded (hooks.attempt)
        rates = price.rates(input_tokens)
        cached = min(max(cached_tokens, 0), input_tokens)
        total = (
            (input_tokens - cached) * rates.input
            + cached * rates.cached_input
            + output_tokens * rates.output
        )
        return total / PER_MILLION

    def estimate(self, link: str, prompt_tokens: int, max_output_tokens: int) -> Decimal | None:
        """The most a call can cost before it is made: the whole prompt uncached and every
        allowed output token used. None when the model is unpriced."""
        price = self.models.get(link)
        if price is None:
            return None
        rates = price.rates(prompt_tokens)
        return (prompt_tokens * rates.input + max_output_tokens * rates.output) / PER_MILLION


def _rates(entry: dict[str, Any], fallback_cached: object) -> Rates:
    return Rates(
        input=Decimal(str(entry["input"])),
        output=Decimal(str(entry["output"])),
        cached_input=Decimal(str(entry.get("cached_input", fallback_cached))),
    )


def parse_price_table(document: dict[str, Any]) -> PriceTable:
    models_raw = document.get("models")
    if not isinstance(models_raw, dict):
        raise ValueError("pricing file needs a 'models' object")
    models: dict[str, ModelPrice] = {}
    for link, entry in models_raw.items():
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ValueError(f"pricing entry {link!r} needs 'input' and 'output' (USD per 1M)")
        base = _rates(entry, entry["input"])
        long_raw = entry.get("long_prompt")
        models[link] = ModelPrice(
            input=base.input,
            output=base.output,
            cached_input=base.cached_input,
            context_window=entry.get("context_window"),
            effective_date=str(entry.get("effective_date", "")),
            long_prompt_threshold=int(long_raw["threshold_tokens"]) if long_raw else None,
            long_prompt=_rates(long_raw, long_raw["input"]) if long_raw else None,
        )
        for value in (base.input, base.output, base.cached_input):
            if value < 0:
                raise ValueError(f"pricing entry {link!r} has a negative price")
    return PriceTable(
        version=str(document.get("version", "unknown")),
        models=models,
        checked=str(document.get("checked", "")),
        batch_models=_batch_models(document, models_raw, models),
    )


def _batch_models(
    document: dict[str, Any], models_raw: dict[str, Any], models: dict[str, ModelPrice]
) -> dict[str, ModelPrice]:
    """Batch API prices: a model's own `batch` rates, else its provider's `batch_discount`
    (the fraction of the sync price, e.g. 0.5) applied to every rate. Unlisted: no batch price."""
    factors = document.get("batch_discount") or {}
    if not isinstance(factors, dict):
        raise ValueError("pricing 'batch_discount' must map a provider to a fraction")
    out: dict[str, ModelPrice] = {}
    for link, price in models.items():
        own = models_raw[link].get("batch")
        factor = factors.get(link.split(":", 1)[0])
        if own is not None:
            rates = _rates(own, own["input"])
            out[link] = ModelPrice(
                rates.input, rates.output, rates.cached_input,
                price.context_window, price.effective_date,
            )  # fmt: skip
        elif factor is not None:
            f = Decimal(str(factor))
            if not 0 < f <= 1:
                raise ValueError(f"batch_discount {factor!r} must be in (0, 1]")

            def scaled(r: Rates, f: Decimal = f) -> Rates:
                return Rates(r.input * f, r.output * f, r.cached_input * f)

            base = scaled(Rates(price.input, price.output, price.cached_input))
            out[link] = ModelPrice(
                base.input, base.output, base.cached_input, price.context_window,
                price.effective_date, price.long_prompt_threshold,
                scaled(price.long_prompt) if price.long_prompt else None,
            )  # fmt: skip
    return out


@lru_cache(maxsize=4)
def load_price_table(override: Path | None = None) -> PriceTable:
    """The shipped table, with entries from an override file replacing or adding models."""
    shipped = json.loads(resources.files("llmq").joinpath("data/pricing.json").read_text())
    table = parse_price_table(shipped)
    if override is not None:
        extra = parse_price_table(json.loads(Path(override).read_text()))
        table = PriceTable(
            version=f"{table.version}+{extra.version}",
            models={**table.models, **extra.models},
            checked=table.checked,
            batch_models={**table.batch_models, **extra.batch_models},
        )
    return table

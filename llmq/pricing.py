"""Token prices and cost arithmetic (exact decimals, never floats)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelPrice:
    input: Decimal
    output: Decimal
    cached_input: Decimal
    context_window: int | None
    effective_date: str


@dataclass(frozen=True)
class PriceTable:
    version: str
    models: dict[str, ModelPrice]

    def get(self, link: str) -> ModelPrice | None:
        return self.models.get(link)

    def cost(
        self, link: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> Decimal | None:
        """USD for one call, or None when the model is unpriced (tokens are still recorded)."""
        price = self.models.get(link)
        if price is None:
            return None
        cached = min(cached_tokens, input_tokens)
        total = (
            (input_tokens - cached) * price.input
            + cached * price.cached_input
            + output_tokens * price.output
        )
        return total / PER_MILLION


def parse_price_table(document: dict[str, object]) -> PriceTable:
    models_raw = document.get("models")
    if not isinstance(models_raw, dict):
        raise ValueError("pricing file needs a 'models' object")
    models: dict[str, ModelPrice] = {}
    for link, entry in models_raw.items():
        models[link] = ModelPrice(
            input=Decimal(str(entry["input"])),
            output=Decimal(str(entry["output"])),
            cached_input=Decimal(str(entry.get("cached_input", entry["input"]))),
            context_window=entry.get("context_window"),
            effective_date=str(entry.get("effective_date", "")),
        )
    return PriceTable(version=str(document.get("version", "unknown")), models=models)


@lru_cache(maxsize=4)
def load_price_table(override: Path | None = None) -> PriceTable:
    """The shipped table, with entries from an override file replacing or adding models."""
    shipped = json.loads(resources.files("llmq").joinpath("data/pricing.json").read_text())
    table = parse_price_table(shipped)
    if override is not None:
        extra = parse_price_table(json.loads(Path(override).read_text()))
        table = PriceTable(
            version=f"{table.version}+{extra.version}", models={**table.models, **extra.models}
        )
    return table

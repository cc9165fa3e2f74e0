"""Process-local counters for events that /metrics can export later (no metrics library needed).

A counter is a name, a help text and a value per label set; `REGISTRY` lists them all so an
exporter can render them without knowing who defined them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

Labels = tuple[tuple[str, str], ...]


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self._values: dict[Labels, int] = {}
        self._lock = threading.Lock()
        REGISTRY.append(self)

    def inc(self, amount: int = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> int:
        """The count for exactly these labels (0 when never incremented)."""
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0)

    def samples(self) -> Iterator[tuple[dict[str, str], int]]:
        with self._lock:
            items = list(self._values.items())
        for labels, value in items:
            yield dict(labels), value


REGISTRY: list[Counter] = []

UNPRICED_MODEL = Counter(
    "llmq_unpriced_model_total",
    "Provider calls whose model has no price in the pricing table (tokens kept, cost null).",
)
BUDGET_SOFT_LIMIT = Counter(
    "llmq_budget_soft_limit_total",
    "Budgets that reached their soft limit (80% by default), once per budget and period.",
)
BUDGET_EXCEEDED = Counter(
    "llmq_budget_exceeded_total",
    "Provider calls refused because the budget left could not cover their estimate.",
)

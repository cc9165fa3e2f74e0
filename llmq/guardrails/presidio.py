"""Optional stronger PII detector: Microsoft Presidio (NER + recognizers) behind the same
guardrail interface. A plugin module: it registers `presidio_pii` when imported.

    pip install 'llmq[presidio]' && python -m spacy download en_core_web_lg
    LLMQ_GUARDRAIL_PLUGINS=llmq.guardrails.presidio
    LLMQ_INPUT_GUARDRAILS=prompt_injection,pii,presidio_pii,banned_terms

Importing this module without presidio-analyzer installed raises ImportError with the install
hint, so a configured-but-missing detector stops the worker at start instead of letting PII
through.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .base import Finding, Verdict

try:
    from presidio_analyzer import AnalyzerEngine
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "the presidio_pii guardrail needs the optional extra: pip install 'llmq[presidio]'"
    ) from exc

from . import register_guardrail


class PresidioPIIGuard:
    """Redacts what Presidio finds, as [ENTITY_TYPE]; findings are counts per entity type."""

    name = "presidio_pii"
    redacts = True  # run at ingest too (see llmq.guardrails.selection)

    def __init__(self, language: str = "en", score_threshold: float = 0.5) -> None:
        self.language = language
        self.score_threshold = score_threshold
        self._engine: Any = None
        self._lock = threading.Lock()

    def _analyzer(self) -> Any:
        # Loading the spaCy model takes seconds and hundreds of MB: only on first use.
        with self._lock:
            if self._engine is None:
                self._engine = AnalyzerEngine()
            return self._engine

    def check(self, text: str) -> Verdict:
        results = self._analyzer().analyze(
            text=text, language=self.language, score_threshold=self.score_threshold
        )
        kept: list[Any] = []
        # Longest, highest-scoring spans first; overlapping weaker spans are dropped.
        for r in sorted(results, key=lambda r: (-(r.end - r.start), -r.score, r.start)):
            if all(r.end <= k.start or r.start >= k.end for k in kept):
                kept.append(r)
        kept.sort(key=lambda r: r.start)
        pieces: list[str] = []
        last = 0
        for r in kept:
            pieces.append(text[last : r.start])
            pieces.append(f"[{r.entity_type}]")
            last = r.end
        pieces.append(text[last:])
        counts = Counter(r.entity_type for r in kept)
        findings = tuple(
            Finding(f"presidio.{entity.lower()}", "redact", n)
            for entity, n in sorted(counts.items())
        )
        return Verdict(text="".join(pieces), findings=findings)


# One shared instance per process: the analyzer (and its spaCy model) is loaded once.
register_guardrail("presidio_pii", PresidioPIIGuard(), stage="input")

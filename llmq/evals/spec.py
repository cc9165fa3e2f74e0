"""A shadow spec: which template version and chain re-run a share of a template's jobs.

Given per template by LLMQ_TEMPLATE_SHADOW (or the TOML config) or per batch (`"shadow"` on
POST /v1/batches): `{"version": 3, "chain": ["openai:gpt-5-nano"], "percent": 20}`.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmq.providers.links import parse_link

KEYS = frozenset({"version", "chain", "percent", "judge"})
MAX_LINKS = 10


@dataclass(frozen=True)
class ShadowSpec:
    chain: tuple[str, ...]
    version: int | None = None  # None: the primary job's own version
    percent: float = 100.0
    judge: str | None = None  # a provider:model link that scores each pair (llmq/evals/judge.py)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ShadowSpec:
        """The spec, or ValueError saying what is wrong with `raw`."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"a shadow spec is an object like {EXAMPLE}, got {raw!r}")
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise ValueError(f"unknown shadow field(s) {', '.join(unknown)}; allowed: version, "
                             "chain, percent, judge")  # fmt: skip
        chain = raw.get("chain")
        if (
            not isinstance(chain, list)
            or not 1 <= len(chain) <= MAX_LINKS
            or not all(isinstance(link, str) for link in chain)
        ):
            raise ValueError(f"shadow chain must be a list of 1..{MAX_LINKS} provider:model links")
        for link in chain:
            parse_link(link)  # ValueError naming the bad link
        version = raw.get("version")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise ValueError(f"shadow version must be a whole number >= 1, got {version!r}")
        percent = raw.get("percent", 100)
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not math.isfinite(percent)
            or not 0 <= percent <= 100
        ):
            raise ValueError(f"shadow percent must be a number in 0..100, got {percent!r}")
        judge = raw.get("judge")
        if judge is not None:
            if not isinstance(judge, str):
                raise ValueError(f"shadow judge must be one provider:model link, got {judge!r}")
            parse_link(judge)
        return cls(chain=tuple(chain), version=version, percent=float(percent), judge=judge)

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "chain": list(self.chain), "percent": self.percent,
                "judge": self.judge}  # fmt: skip

    def takes(self, job_id: uuid.UUID | str) -> bool:
        """Is this job in the shadowed share? A hash of its id: the same job always gets the
        same answer (a redelivery, a re-run report), and the share is uniform over jobs."""
        return share_point(job_id) < self.percent / 100.0


EXAMPLE = '{"version": 3, "chain": ["openai:gpt-5-nano"], "percent": 20}'


def share_point(job_id: uuid.UUID | str) -> float:
    """The job's place in [0, 1): the first 8 bytes of SHA-256 of its id."""
    digest = hashlib.sha256(str(job_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def variant_label(version: int, chain: Sequence[str]) -> str:
    """How a report names a variant: `v3 openai:gpt-5-nano>anthropic:claude-haiku-4-5`."""
    return f"v{version} {'>'.join(chain)}"

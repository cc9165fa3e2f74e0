"""The optional LLM judge of a shadow pair: what it is asked and how its answer is read.

The judge sees the source and both answers as "A" and "B" and scores each 1-10. Which answer is
A is decided by a hash of the judge job's id, half the pairs each way, so a judge's preference
for the first (or second) answer averages out instead of favouring one variant.
"""

from __future__ import annotations

import json
import math
import uuid

from llmq.evals.spec import share_point

TEMPLATE = "judge_pair"  # llmq/templates.py
PARAMS = {"response_format": "json"}


def swapped(judge_id: uuid.UUID | str) -> bool:
    """Is the shadow's answer shown first (as A) to this judge job?"""
    return share_point(judge_id) < 0.5


def judge_input(source: str, primary: str, shadow: str, *, swap: bool) -> str:
    first, second = (shadow, primary) if swap else (primary, shadow)
    return (
        f"SOURCE DOCUMENT:\n{source}\n\nANSWER A:\n{first}\n\nANSWER B:\n{second}\n\n"
        'Score both answers. Reply with {"a": <1-10>, "b": <1-10>} only.'
    )


def parse_verdict(text: str, *, swap: bool) -> tuple[float, float] | None:
    """(primary's score, shadow's score), or None for an answer that is not two scores 1-10."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    scores = []
    for key in ("a", "b"):
        score = value.get(key)
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
            or not 1 <= score <= 10
        ):
            return None
        scores.append(float(score))
    a, b = scores
    return (b, a) if swap else (a, b)

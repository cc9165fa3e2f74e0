"""Token estimation used before a provider reports real usage (budgets, context-window checks).

A documented estimator, not the tokenizer: the larger of (characters / 4) and (words * 4/3),
which tracks cl100k/o200k-style BPE counts for English prose within about 10-15% and errs high.
The offline cl100k tokenizer (llmq/tokenizer.py) cuts long documents, where exact boundaries
matter; here speed does: a 50,000-item submission is estimated item by item on the request path.
Providers' reported usage is always what is billed.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\S+")


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    words = len(_WORD.findall(text))
    return max(1, (len(text) + 3) // 4, (words * 4 + 2) // 3)

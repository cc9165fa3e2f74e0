"""Splitting a long document into overlapping chunks that each fit a token budget.

Pure logic (no I/O): the document is cut into units that end at paragraph breaks, sentence ends
or, for a sentence longer than the budget, token boundaries. Units are packed greedily into
chunks of at most `max_tokens`; each chunk ends at the strongest boundary (paragraph > sentence >
token) in its last part, and the next chunk starts with whole sentences from the end of the
previous one (up to `overlap_tokens`) so a fact cut at a boundary is seen whole by one chunk.

A chunk is a span of the original text (`text[start:end]`), so chunks can be checked against the
document exactly and nothing is rewritten.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from llmq.longdocs.tokenizer import Tokenizer

PARAGRAPH, SENTENCE, TOKEN = 2, 1, 0
# A chunk may end early at a better boundary, but never below this share of what would fit.
MIN_FILL = 0.6

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? (with closing quotes or brackets) before whitespace, or at a line end.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\n\s*")


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # character offsets into the document
    end: int
    tokens: int


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    strength: int  # of the boundary after this unit


def check_budget(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < 16:
        raise ValueError(f"chunk size must be at least 16 tokens, got {max_tokens}")
    if not 0 <= overlap_tokens <= max_tokens // 4:
        raise ValueError(
            f"overlap must be between 0 and a quarter of the chunk size ({max_tokens // 4}), "
            f"got {overlap_tokens}"
        )


def split_document(
    text: str, max_tokens: int, overlap_tokens: int, tokenizer: Tokenizer
) -> list[Chunk]:
    """The chunks of `text`, in order; one chunk when it fits already."""
    check_budget(max_tokens, overlap_tokens)
    if not text:
        return []
    total = tokenizer.count(text)
    if total <= max_tokens:
        return [Chunk(0, 0, len(text), total)]
    units = _units(text, max_tokens, tokenizer)
    chunks: list[Chunk] = []
    first, covered = 0, 0  # first unit of the next chunk; units [0, covered) are in a chunk
    while covered < len(units):
        last = _fill(units, first, max_tokens)
        if last <= covered:
            # The overlap left no room for new text: start this chunk without it.
            first = covered
            last = _fill(units, first, max_tokens)
        if last < len(units):
            last = _best_end(units, first, last, covered)
        # Unit counts are summed; the exact count of the joined text decides (BPE merges across
        # unit edges rarely differ, but the budget is a promise).
        while True:
            tokens = tokenizer.count(text[units[first].start : units[last - 1].end])
            if tokens <= max_tokens:
                break
            if last - 1 > max(first, covered):
                last -= 1
            elif first < covered:
                first = covered  # drop the overlap before dropping new text
            else:
                break  # one unit over budget: only the estimating fallback can get here
        chunks.append(Chunk(len(chunks), units[first].start, units[last - 1].end, tokens))
        covered = last
        first = _overlap_start(units, first, last, overlap_tokens)
    return chunks


def _units(text: str, max_tokens: int, tokenizer: Tokenizer) -> list[_Unit]:
    units: list[_Unit] = []
    for start, end, strength in _sentences(text):
        piece = text[start:end]
        count = tokenizer.count(piece)
        if count <= max_tokens:
            units.append(_Unit(start, end, count, strength))
            continue
        # One sentence larger than a chunk: cut it on token boundaries.
        for a, b, tokens in _hard_cut(piece, max_tokens, max_tokens, tokenizer):
            kind = strength if b == len(piece) else TOKEN
            units.append(_Unit(start + a, start + b, tokens, kind))
    return units


def _hard_cut(
    text: str, max_tokens: int, window: int, tokenizer: Tokenizer
) -> list[tuple[int, int, int]]:
    """(start, end, tokens) pieces of at most `max_tokens`, cut on token boundaries. BPE merges
    inside a word depend on the whole word, so a piece re-encoded on its own can count more
    than its window: such a piece is cut again with half the window, and at a window of one
    token, halved by characters (a single character always fits, so this ends)."""
    pieces: list[tuple[int, int, int]] = []
    edges = [0, *tokenizer.cut_points(text, window), len(text)]
    for a, b in itertools.pairwise(edges):
        if a == b:
            continue
        tokens = tokenizer.count(text[a:b])
        if tokens <= max_tokens or b - a == 1:
            pieces.append((a, b, tokens))
            continue
        # Even one-token windows can leave a piece too big (tokens that straddle a multi-byte
        # character have no cut point between them): then halve it by characters.
        halves = [(a, b)] if window > 1 else [(a, (a + b) // 2), ((a + b) // 2, b)]
        for lo, hi in halves:
            for x, y, n in _hard_cut(text[lo:hi], max_tokens, max(1, window // 2), tokenizer):
                pieces.append((lo + x, lo + y, n))
    return pieces


def _sentences(text: str) -> list[tuple[int, int, int]]:
    """(start, end, boundary strength) spans covering `text` exactly, trailing space included."""
    spans: list[tuple[int, int, int]] = []
    paragraph_start = 0
    breaks = [(m.start(), m.end()) for m in _PARAGRAPH_BREAK.finditer(text)]
    for brk_start, brk_end in [*breaks, (len(text), len(text))]:
        if brk_end <= paragraph_start:
            continue
        position = paragraph_start
        for match in _SENTENCE_END.finditer(text, paragraph_start, brk_start):
            if match.end() > position and match.end() < brk_start:
                spans.append((position, match.end(), SENTENCE))
                position = match.end()
        if brk_end > position:
            spans.append((position, brk_end, PARAGRAPH))
        paragraph_start = brk_end
    return spans


def _fill(units: list[_Unit], first: int, max_tokens: int) -> int:
    """One past the last unit that fits when packing from `first` (at least one unit)."""
    total, last = 0, first
    while last < len(units) and total + units[last].tokens <= max_tokens:
        total += units[last].tokens
        last += 1
    return max(last, first + 1)


def _best_end(units: list[_Unit], first: int, last: int, covered: int) -> int:
    """Move the end back to the strongest boundary that keeps the chunk at least MIN_FILL full
    and still adds text beyond what earlier chunks covered."""
    full = sum(u.tokens for u in units[first:last])
    best, best_strength = last, units[last - 1].strength
    filled = full
    for end in range(last - 1, max(first, covered), -1):
        filled -= units[end].tokens
        if filled < MIN_FILL * full:
            break
        if units[end - 1].strength > best_strength:
            best, best_strength = end, units[end - 1].strength
    return best


def _overlap_start(units: list[_Unit], first: int, last: int, overlap_tokens: int) -> int:
    """Where the next chunk starts: whole units from the end of this one, up to the overlap."""
    start, total = last, 0
    while start - 1 > first and total + units[start - 1].tokens <= overlap_tokens:
        total += units[start - 1].tokens
        start -= 1
    return start

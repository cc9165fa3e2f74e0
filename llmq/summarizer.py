"""An honest offline extractive summarizer: it selects the document's most informative
sentences, in their original order. It is not an LLM and never writes a word of its own.

Scoring: normalized frequency of content words, a boost for the lead sentence of the document
and of each paragraph (news-style writing front-loads), words from the title counted double,
mild length normalization, and near-duplicates (Jaccard > 0.6 against a chosen sentence) skipped.
"""

from __future__ import annotations

import re
from collections import Counter

_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "inc",
    "ltd",
    "co",
    "corp",
    "e.g",
    "i.e",
    "u.s",
    "u.k",
    "no",
    "fig",
    "approx",
    "dept",
    "est",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "mt",
    "ft",
    "gen",
    "gov",
    "sen",
}
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    one two may might must shall said says also would could us upon new like""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+|\d+(?:[.,]\d+)*%?")
# A candidate boundary: terminal punctuation (optionally closed by quotes/brackets) + space.
_BOUNDARY = re.compile(r"([.!?]+[\"')\]]*)\s+")


def _split_paragraph(paragraph: str) -> list[str]:
    # A short line without terminal punctuation is a heading or label: a sentence of its own.
    sentences: list[str] = []
    pending: list[str] = []
    for line in paragraph.splitlines():
        stripped = line.strip()
        if _is_heading(stripped):
            sentences += _split_text(" ".join(pending))
            pending = []
            sentences.append(stripped)
        elif stripped:
            pending.append(stripped)
    return sentences + _split_text(" ".join(pending))


def _is_heading(line: str) -> bool:
    return bool(line) and len(line.split()) <= 10 and not line.endswith((".", "!", "?", ":", ","))


def _split_text(paragraph: str) -> list[str]:
    text = " ".join(paragraph.split())
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end(1)
        before = text[start:end]
        last_word = before.rsplit(" ", 1)[-1].rstrip(".!?\"')]").lower()
        following = text[match.end() : match.end() + 1]
        if match.group(1).startswith(".") and len(match.group(1)) == 1:
            # "Dr. Smith", "e.g. this", "U.S. policy": an abbreviation, not a sentence end.
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
            if following and following.islower():
                continue
        sentences.append(before.strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`; paragraph breaks always end a sentence."""
    return [s for p in _paragraphs(text) for s in _split_paragraph(p)]


def _content_words(sentence: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(sentence)) if w not in _STOPWORDS]


def _is_prose(sentence: str) -> bool:
    """Headers, sign-offs and lists carry few function words; prose is full of them."""
    tokens = [m.lower() for m in _WORD.findall(sentence)]
    return bool(tokens) and sum(t in _STOPWORDS for t in tokens) / len(tokens) >= 0.2


def _title_and_body(text: str) -> tuple[str | None, str]:
    lines = text.strip().split("\n", 1)
    first = lines[0].strip()
    if len(lines) == 2 and first and not first.endswith((".", "!", "?", ":")) and len(first) < 300:
        return first, lines[1]
    return None, text


def summarize_extractive(
    text: str, *, max_sentences: int | None = None, max_words: int = 120
) -> str:
    """The most informative sentences of `text`, in original order, within `max_words`
    (exceeded only when the single best sentence is longer on its own)."""
    if not text or not text.strip():
        return ""
    title, body = _title_and_body(text)
    located: list[tuple[int, bool, str]] = []  # (index, leads a paragraph, sentence)
    for paragraph in _paragraphs(body):
        for position, sentence in enumerate(_split_paragraph(paragraph)):
            located.append((len(located), position == 0, sentence))
    total_words = sum(len(s.split()) for _, _, s in located)
    if len(located) <= 2 or total_words <= max_words:
        return " ".join(s for _, _, s in located)

    if max_sentences is None:
        max_sentences = 3 if total_words < 600 else 4 if total_words < 2000 else 6
    frequencies = Counter(w for _, _, s in located for w in _content_words(s))
    if title:
        for word in _content_words(title):
            frequencies[word] *= 2
    top = max(frequencies.values(), default=1)

    scored: list[tuple[float, int]] = []
    for index, leads, sentence in located:
        words = _content_words(sentence)
        complete = sentence.rstrip("\"')]").endswith((".", "!", "?"))
        if len(words) < 3 or not complete or not _is_prose(sentence):
            continue
        score = sum(frequencies[w] / top for w in set(words)) / (len(set(words)) ** 0.5 + 1)
        if index == 0:
            score *= 1.6
        elif leads:
            score *= 1.15
        scored.append((score, index))
    scored.sort(key=lambda item: (-item[0], item[1]))

    chosen: list[int] = []
    chosen_sets: list[set[str]] = []
    used_words = 0
    for _, index in scored:
        sentence = located[index][2]
        vocabulary = set(_content_words(sentence))
        if any(len(vocabulary & other) / len(vocabulary | other) > 0.6 for other in chosen_sets):
            continue
        length = len(sentence.split())
        if chosen and used_words + length > max_words:
            continue
        chosen.append(index)
        chosen_sets.append(vocabulary)
        used_words += length
        if len(chosen) >= max_sentences or used_words >= max_words:
            break
    return " ".join(located[i][2] for i in sorted(chosen))

"""An honest offline extractive summarizer: it selects the document's most informative
sentences, in their original order. It is not an LLM and never writes a word of its own.

Scoring: normalized frequency of content words (title words weigh more), a boost for the lead
sentence of the document and of each paragraph (expository writing front-loads), mild length
normalization, and near-duplicates (Jaccard > 0.6 against a chosen sentence) skipped. Everything is
a handful of linear regex passes, so a 5,000-word document takes a few milliseconds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

_STOPWORDS = frozenset(
    """
    a about above after again against all almost along already also although always am among an
    and another any anyone anything are around as at away be because been before being below
    between both but by can cannot could did do does doing done down during each either else
    enough etc even ever every few for from further get gets getting got had has have having he
    her here hers herself him himself his how however i if in instead into is it its itself just
    least less let like made make makes many may me might more most much must my myself near
    neither never new no nor not now of off often on once one only onto or other others otherwise
    our ours ourselves out over own per perhaps quite rather really same say said says see seen
    shall she should since so some something still such than that the their theirs them
    themselves then there therefore these they thing things this those though through thus to
    together too toward towards two under until up upon us use used using very via was way we
    well were what whatever when whenever where whether which while who whom whose why will with
    within without would yet you your yours yourself yourselves
    """.split()  # noqa: SIM905 (200 quoted strings would hide the words)
)

# Abbreviations after which a period never ends a sentence ("Dr. Okafor", "e.g. this").
_NEVER_FINAL = frozenset(
    {"mr", "mrs", "ms", "mx", "dr", "prof", "rev", "hon", "gen", "col", "lt", "capt", "sgt", "sen",
     "rep", "gov", "pres", "vs", "cf", "e.g", "i.e", "viz", "approx", "ca"}
)  # fmt: skip
# ... a period ends no sentence when a number follows ("No. 5", "Fig. 3", "Jan. 14").
_BEFORE_NUMBER = frozenset(
    {"no", "nos", "fig", "figs", "vol", "vols", "pp", "art", "sec", "ch", "eq", "ver", "jan",
     "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
)  # fmt: skip
# ... and a period may or may not end one ("Acme Inc. The", "Acme Inc. Reported"): these, single
# initials and dotted acronyms ("U.S.", "a.m.") end a sentence only before a typical sentence
# opener such as "The", "It" or "However".
_MAYBE_FINAL = frozenset(
    {"etc", "inc", "ltd", "co", "corp", "llc", "plc", "jr", "sr", "st", "ave", "rd", "blvd", "mt",
     "ft", "dept", "est", "al", "bros"}
)  # fmt: skip
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")

_BOUNDARY = re.compile(r"([.!?\u2026]+[\"'\u201d\u2019)\]]*)\s+(?=\S)")
_BLOCK_BREAK = re.compile(r"\n[ \t]*\n")
_LIST_ITEM = re.compile(r"^(?:[-*\u2022\u00b7+]|\d{1,2}[.)]|[a-z][.)])\s+")
_LINE_MARKUP = re.compile(r"^(?:>\s?)+|^#{1,6}\s+")
_TERMINAL = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*$")
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*")
# "CLARA JANSEN: ..." in a transcript: the speaker's name repeats every turn, so counting it as a
# content word would make every one-line question look central.
_SPEAKER = re.compile(r"^[A-Z][A-Z0-9 .'\u2019-]{1,40}:\s")
_EMAIL_HEADER = re.compile(r"^(?:from|to|cc|bcc|date|sent|subject|re|fwd?)\s*:", re.IGNORECASE)


def _ends_sentence(before: str, after: str, punctuation: str) -> bool:
    """Whether the punctuation that ends `before` closes a sentence, given the text `after`."""
    if after[:1].islower():
        return False  # "e.g. this", "U.S. policy", "Why? she asked"
    if not punctuation.startswith(".") or punctuation.startswith(".."):
        return True  # ?, !, and ellipses followed by a capital
    token = before.rsplit(None, 1)[-1].lower().rstrip(".")
    token = token.lstrip("(\"'\u201c\u2018[")
    if token in _NEVER_FINAL:
        return False
    if token in _BEFORE_NUMBER and after[:1].isdigit():
        return False
    if token in _MAYBE_FINAL or _DOTTED.fullmatch(token) or (len(token) == 1 and token.isalpha()):
        opener = _WORD.match(after.lstrip("\"'\u201c\u2018(["))
        return opener is not None and opener.group(0).lower() in _STOPWORDS
    return True


def _split_unit(unit: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(unit):
        # Bounded look-behind/ahead windows keep this linear on pathological inputs.
        before = unit[max(start, match.start() - 40) : match.end(1)]
        after = unit[match.end() : match.end() + 40]
        if _ends_sentence(before, after, match.group(1)):
            sentences.append(unit[start : match.end(1)])
            start = match.end()
    sentences.append(unit[start:])
    return [s for s in sentences if s]


def _looks_wrapped(lines: list[str]) -> bool:
    """A hard-wrapped paragraph: three or more lines, all but the last of similar, typical
    terminal widths. Its line breaks are layout, not structure."""
    if len(lines) < 3:
        return False
    body = [len(line) for line in lines[:-1]]
    return min(body) >= 40 and max(body) <= 120 and max(body) - min(body) <= 25


def _units(block: str) -> list[str]:
    """The logical lines of a block: a line break ends a sentence unless it is a soft wrap."""
    lines = [line.strip() for line in block.split("\n") if line.strip()]
    if not lines:
        return []
    wrapped = _looks_wrapped(lines)
    units = [[lines[0]]]
    for line in lines[1:]:
        soft = not _LIST_ITEM.match(line) and not _TERMINAL.search(units[-1][-1])
        if soft and (wrapped or line[:1].islower()):
            units[-1].append(line)
        else:
            units.append([line])
    joined = (" ".join(parts) for parts in units)
    cleaned = (" ".join(_LINE_MARKUP.sub("", _LIST_ITEM.sub("", u)).split()) for u in joined)
    return [u for u in cleaned if u]


def _blocks(text: str) -> list[list[str]]:
    """Sentences grouped by paragraph (blank-line separated block)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    blocks = []
    for block in _BLOCK_BREAK.split(text):
        sentences = [s for unit in _units(block) for s in _split_unit(unit)]
        if sentences:
            blocks.append(sentences)
    return blocks


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace-normalized, in order.

    Line breaks end sentences (titles, headings, list items, "From:" lines), except soft wraps:
    a line continuing in lower case, or any line of a hard-wrapped paragraph. Periods after
    abbreviations ("Dr.", "e.g.", "U.S."), inside numbers ("3.5") and ellipses followed by lower
    case do not. List bullets, heading hashes and quote markers are stripped.
    """
    return [sentence for block in _blocks(text) for sentence in block]


def _terms(sentence: str) -> list[str]:
    """Content words, lower-cased, possessives and plain plurals folded ("cells" -> "cell")."""
    terms = []
    for raw in _WORD.findall(_SPEAKER.sub("", sentence)):
        word = raw.lower().replace("\u2019", "'")
        if word.endswith("'s"):
            word = word[:-2]
        word = word.strip("'-")
        if len(word) < 3 or word in _STOPWORDS:
            continue
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
            word = word[:-1]
        terms.append(word)
    return terms


def _is_prose(sentence: str, words: int) -> bool:
    """Headers, sign-offs, "Date: ..." lines and table rows are not summary material: prose ends
    in terminal punctuation (or runs long) and is full of function words."""
    if words < 5 or (words < 12 and not _TERMINAL.search(sentence)):
        return False
    if _EMAIL_HEADER.match(sentence):
        return False
    tokens = _WORD.findall(sentence)
    return bool(tokens) and sum(t.lower() in _STOPWORDS for t in tokens) >= 0.15 * len(tokens)


@dataclass
class _Sentence:
    index: int
    text: str
    words: int
    terms: frozenset[str]
    leads_paragraph: bool


def _title(blocks: list[list[str]]) -> str | None:
    """A first line without terminal punctuation, followed by more text, is a title."""
    if not blocks or (len(blocks) == 1 and len(blocks[0]) == 1):
        return None
    first = blocks[0][0]
    return first if not _TERMINAL.search(first) and len(first.split()) <= 25 else None


def _default_max_sentences(total_words: int) -> int:
    return 3 if total_words < 300 else 4 if total_words < 800 else 5 if total_words < 2000 else 6


def summarize_extractive(
    text: str, *, max_sentences: int | None = None, max_words: int = 120
) -> str:
    """The most informative sentences of `text`, in original order, joined by single spaces.

    A first line without terminal punctuation is a title: never output (unless it is all there
    is), but its words weigh more. Short input (at most two sentences, or at most `max_words`
    words, after the title) comes back whole, whitespace-normalized, even if longer than
    `max_words`. Otherwise the summary never exceeds `max_words`, except when every candidate
    sentence alone is longer; then it is the single best sentence, uncut, because cutting would
    put words in the document's mouth. `max_sentences` defaults to 3 for short documents, rising
    to 6 for long ones. Deterministic.
    """
    if max_words < 1 or (max_sentences is not None and max_sentences < 1):
        raise ValueError("max_words and max_sentences must be at least 1")
    blocks = _blocks(text)
    if not blocks:
        return ""
    title = _title(blocks)
    if title is not None:
        blocks[0] = blocks[0][1:]
        blocks = [b for b in blocks if b]
    body = [s for block in blocks for s in block]
    total_words = sum(len(s.split()) for s in body)
    if len(body) <= 2 or total_words <= max_words:
        return " ".join(body) if body else (title or "")

    sentences: list[_Sentence] = []
    for block in blocks:
        for position, sentence in enumerate(block):
            terms = _terms(sentence)
            sentences.append(
                _Sentence(
                    len(sentences), sentence, len(sentence.split()), frozenset(terms), position == 0
                )
            )
    frequencies = Counter(t for s in sentences for t in s.terms)
    for term in set(_terms(title or "")):
        if term in frequencies:
            frequencies[term] = math.ceil(frequencies[term] * 1.5) + 1
    top = max(frequencies.values(), default=1)

    candidates = [s for s in sentences if s.terms and _is_prose(s.text, s.words)]
    if not candidates:
        candidates = [s for s in sentences if s.terms] or sentences
    scored: list[tuple[float, int]] = []
    for s in candidates:
        # Sum of normalized frequencies over distinct terms, divided by sqrt(n): a sentence gains
        # for covering more of the document's vocabulary, but not in proportion to its length.
        score = sum(frequencies[t] / top for t in s.terms) / math.sqrt(max(1, len(s.terms)))
        if s.index == 0:
            score *= 1.5
        elif s.leads_paragraph:
            score *= 1.15
        if s.words < 8:
            score *= 0.8  # fragments rarely carry a finding
        elif s.words > 50:
            score *= 0.85  # run-ons spend the word budget on one idea
        if s.text.rstrip("\"'\u201d\u2019)]").endswith("?"):
            score *= 0.7  # a summary reports answers, not the questions asked
        scored.append((score, s.index))
    scored.sort(key=lambda item: (-item[0], item[1]))

    if max_sentences is None:
        max_sentences = _default_max_sentences(total_words)
    chosen: list[_Sentence] = []
    used = 0
    for _, index in scored:
        candidate = sentences[index]
        if used + candidate.words > max_words:
            continue  # a shorter, lower-ranked sentence may still fit
        if any(_jaccard(candidate.terms, c.terms) > 0.6 for c in chosen):
            continue
        chosen.append(candidate)
        used += candidate.words
        if len(chosen) >= max_sentences or max_words - used < 6:
            break
    if not chosen:
        chosen = [sentences[scored[0][1]]]
    return " ".join(s.text for s in sorted(chosen, key=lambda s: s.index))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0

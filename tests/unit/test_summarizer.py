"""The offline extractive summarizer: sentence splitting, selection, budget and determinism.

Budget rule under test: a summary never exceeds `max_words`, except when every candidate sentence
alone is longer than that; then it is the single best sentence, uncut. Short input (at most two
sentences, or at most `max_words` words) is returned whole.
"""

from __future__ import annotations

import pytest

from llmq.cli.demo import sample_documents
from llmq.longdocs.summarizer import split_sentences, summarize_extractive

SAMPLES = sample_documents()

# ------------------------------------------------------------------------------ split_sentences


SPLITS: list[tuple[str, list[str]]] = [
    (
        "Dr. Ames paid $3.50 for e.g. coffee in the U.S. yesterday. Was it good? Yes!\n\n"
        "A new paragraph without a full stop",
        [
            "Dr. Ames paid $3.50 for e.g. coffee in the U.S. yesterday.",
            "Was it good?",
            "Yes!",
            "A new paragraph without a full stop",
        ],
    ),
    (
        "Revenue rose 3.5 percent. Costs fell 1.25 percent.",
        ["Revenue rose 3.5 percent.", "Costs fell 1.25 percent."],
    ),
    (
        "Mr. and Mrs. Smith met Prof. Lee. They talked.",
        ["Mr. and Mrs. Smith met Prof. Lee.", "They talked."],
    ),
    (
        "We use tools, i.e. hammers, and more, e.g. saws. They work.",
        ["We use tools, i.e. hammers, and more, e.g. saws.", "They work."],
    ),
    ("He moved to the U.S. The move was hard.", ["He moved to the U.S.", "The move was hard."]),
    (
        "Shares of U.S. Steel rose. Analysts cheered.",
        ["Shares of U.S. Steel rose.", "Analysts cheered."],
    ),
    (
        "See Fig. 3 and No. 5 for details. I said no. Then I left.",
        ["See Fig. 3 and No. 5 for details.", "I said no.", "Then I left."],
    ),
    (
        "The meeting starts at 9 a.m. The agenda is short.",
        ["The meeting starts at 9 a.m.", "The agenda is short."],
    ),
    (
        "J. R. R. Tolkien wrote it. Critics loved it.",
        ["J. R. R. Tolkien wrote it.", "Critics loved it."],
    ),
    (
        "Wait... what happened? Nothing... Then it rained!",
        ["Wait... what happened?", "Nothing...", "Then it rained!"],
    ),
    (
        'He said "Stop." Then he left. "Why?" she asked.',
        ['He said "Stop."', "Then he left.", '"Why?" she asked.'],
    ),
    (
        "The deal (signed in May.) closed. Everyone relaxed.",
        ["The deal (signed in May.) closed.", "Everyone relaxed."],
    ),
    ("Version 4.7. It ships today.", ["Version 4.7.", "It ships today."]),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_line_breaks_end_sentences_but_soft_wraps_do_not() -> None:
    text = (
        "Quarterly Review\n"
        "From: Jordan Reyes\n"
        "- first item\n"
        "* second item\n"
        "1. third item\n"
        "## Background\n"
        "The council voted to approve the\n"
        "budget on Tuesday. It passed."
    )
    assert split_sentences(text) == [
        "Quarterly Review",
        "From: Jordan Reyes",
        "first item",
        "second item",
        "third item",
        "Background",
        "The council voted to approve the budget on Tuesday.",
        "It passed.",
    ]


def test_hard_wrapped_paragraphs_are_rejoined() -> None:
    text = (
        "The reservoir stood at 23 percent of capacity on Monday, according to\n"
        "the Sorrel Valley Water Authority, and officials in Linden Springs said\n"
        "Stage 3 restrictions could begin in July. Farmers have already cut\n"
        "irrigation by a fifth."
    )
    assert split_sentences(text) == [
        "The reservoir stood at 23 percent of capacity on Monday, according to the Sorrel Valley "
        "Water Authority, and officials in Linden Springs said Stage 3 restrictions could begin "
        "in July.",
        "Farmers have already cut irrigation by a fifth.",
    ]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n"])
def test_split_of_nothing_is_empty(text: str) -> None:
    assert split_sentences(text) == []


def test_windows_line_endings() -> None:
    assert split_sentences("One here.\r\nTwo here.\r\n\r\nThree here.") == [
        "One here.",
        "Two here.",
        "Three here.",
    ]


# ------------------------------------------------------------------------- summarize_extractive


def _positions(text: str, summary: str) -> list[int]:
    """Where each summary sentence sits in the document (ValueError if one is not verbatim)."""
    sentences = split_sentences(text)
    return [sentences.index(s) for s in split_sentences(summary)]


@pytest.mark.parametrize(("name", "text"), SAMPLES, ids=[name for name, _ in SAMPLES])
@pytest.mark.parametrize("max_words", [50, 120, 160])
def test_summary_is_original_sentences_in_order_within_budget(
    name: str, text: str, max_words: int
) -> None:
    summary = summarize_extractive(text, max_words=max_words)
    positions = _positions(text, summary)
    assert positions, name
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    if len(positions) > 1:
        assert len(summary.split()) <= max_words
    assert len(positions) <= 6


@pytest.mark.parametrize(("name", "text"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_summary_never_picks_the_title_or_headers(name: str, text: str) -> None:
    summary = split_sentences(summarize_extractive(text))
    title = text.strip().splitlines()[0].strip()
    assert title not in summary
    assert not any(s.startswith(("From:", "To:", "Date:")) for s in summary)


def test_max_sentences_is_respected() -> None:
    _, text = SAMPLES[0]
    for limit in (1, 2, 3):
        summary = summarize_extractive(text, max_sentences=limit, max_words=400)
        assert len(split_sentences(summary)) == limit


def test_default_sentence_count_grows_with_length() -> None:
    # Budgets just under each document's length, so the sentence cap is what binds.
    short_doc = dict(SAMPLES)["22-museum-exhibit-description"]  # under 300 words: 3 sentences
    long_doc = dict(SAMPLES)["01-payments-outage-postmortem"]  # over 2,000 words: 6 sentences
    short = summarize_extractive(short_doc, max_words=len(short_doc.split()) - 20)
    long = summarize_extractive(long_doc, max_words=len(long_doc.split()) - 20)
    assert len(split_sentences(short)) == 3
    assert len(split_sentences(long)) == 6


def test_one_oversized_sentence_is_returned_whole() -> None:
    clause = "the committee reviewed the budget for the harbor dredging project and"
    text = " ".join(f"{name} said {clause} {clause} agreed." for name in ("Ana", "Ben", "Cy"))
    assert len(split_sentences(text)) == 3
    summary = summarize_extractive(text, max_words=10)
    assert len(split_sentences(summary)) == 1
    assert summary in split_sentences(text)
    assert len(summary.split()) > 10  # the documented exception: no single sentence fits


def test_short_text_is_returned_unchanged_and_empty_is_empty() -> None:
    assert summarize_extractive("One sentence only.") == "One sentence only."
    two = "A first sentence that is quite long. A second one."
    assert summarize_extractive(two, max_words=3) == two
    few_words = "Alpha beta.\nGamma delta.\n\nEpsilon zeta."
    assert summarize_extractive(few_words) == "Alpha beta. Gamma delta. Epsilon zeta."
    assert summarize_extractive("") == ""
    assert summarize_extractive("  \n\n ") == ""


@pytest.mark.parametrize("kwargs", [{"max_words": 0}, {"max_sentences": 0}])
def test_nonsense_limits_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        summarize_extractive("One. Two. Three.", **kwargs)


def test_a_title_alone_comes_back_and_is_otherwise_dropped() -> None:
    assert summarize_extractive("Just A Title") == "Just A Title"
    assert summarize_extractive("Notes\nWe met. We agreed.") == "We met. We agreed."


def test_deterministic_and_prefers_informative_lead() -> None:
    text = (
        "Quarterly Report\n"
        "Revenue grew 12 percent to 40 million dollars as exports of turbines doubled. "
        "The weather was pleasant for most of the quarter. "
        "Turbine exports to Brazil and Chile drove most of the revenue growth. "
        "Staff enjoyed the new coffee machine. "
        "Margins on turbine sales rose to 31 percent while revenue from services held flat. "
        "The parking lot was repainted."
    )
    first = summarize_extractive(text, max_sentences=2, max_words=40)
    assert all(summarize_extractive(text, max_sentences=2, max_words=40) == first for _ in range(5))
    assert first.startswith("Revenue grew 12 percent")
    assert "coffee" not in first and "parking" not in first


def test_near_duplicates_are_not_both_chosen() -> None:
    text = (
        "The new bridge over the river opens to traffic in March after three years of work. "
        "The new bridge over the river opens to traffic in March after three years of building. "
        "Tolls on the bridge will be two dollars for cars and five dollars for trucks. "
        "The old ferry service will end once the bridge opens to traffic. "
        "City officials expect the bridge to cut commute times across the river by half."
    )
    summary = summarize_extractive(text, max_sentences=3, max_words=60)
    assert "three years of work" in summary
    assert "three years of building" not in summary


def test_five_thousand_words_give_a_short_summary_of_their_own_sentences() -> None:
    # Correctness at size only: a wall-clock bound would fail on a loaded machine.
    text = " ".join(" ".join(t for _, t in SAMPLES).split()[:5000])
    summary = summarize_extractive(text)
    assert 0 < len(summary.split()) <= 120 + 60  # the word budget, plus one last sentence
    assert all(sentence.strip() in text for sentence in summary.split(". ") if sentence.strip())

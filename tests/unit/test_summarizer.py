from __future__ import annotations

from llmq.demo import sample_documents
from llmq.summarizer import split_sentences, summarize_extractive


def test_split_sentences_handles_abbreviations_decimals_and_paragraphs() -> None:
    text = (
        "Dr. Ames paid $3.50 for e.g. coffee in the U.S. yesterday. Was it good? Yes!\n\n"
        "A new paragraph without a full stop"
    )
    assert split_sentences(text) == [
        "Dr. Ames paid $3.50 for e.g. coffee in the U.S. yesterday.",
        "Was it good?",
        "Yes!",
        "A new paragraph without a full stop",
    ]


def test_summary_is_original_sentences_in_original_order_within_budget() -> None:
    for name, text in sample_documents():
        summary = summarize_extractive(text, max_words=120)
        sentences = split_sentences(text)
        picked = split_sentences(summary)
        assert picked, name
        positions = [sentences.index(s) for s in picked]  # every one is verbatim
        assert positions == sorted(positions), name
        if len(picked) > 1:
            assert len(summary.split()) <= 120, name


def test_short_text_is_returned_unchanged_and_empty_is_empty() -> None:
    assert summarize_extractive("One sentence only.") == "One sentence only."
    assert summarize_extractive("  ") == ""


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
    assert first == summarize_extractive(text, max_sentences=2, max_words=40)
    assert first.startswith("Revenue grew 12 percent")
    assert "coffee" not in first and "parking" not in first

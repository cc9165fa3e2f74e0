"""Chunking of long documents: budgets, boundaries, overlap and coverage, on the real BPE."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmq.longdocs.chunking import Chunk, split_document
from llmq.longdocs.tokenizer import BpeTokenizer, EstimatingTokenizer, Tokenizer, get_tokenizer

TOKENIZER = get_tokenizer()


def paragraph(n: int, sentences: int = 6) -> str:
    return " ".join(
        f"Paragraph {n} sentence {i} reports that the turbine array produced {n * 10 + i} "
        f"megawatt hours during the review period."
        for i in range(sentences)
    )


def document(paragraphs: int) -> str:
    return "\n\n".join(paragraph(n) for n in range(paragraphs))


def assert_well_formed(text: str, chunks: list[Chunk], max_tokens: int, tok: Tokenizer) -> None:
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.tokens == tok.count(text[chunk.start : chunk.end])
        assert chunk.tokens <= max_tokens
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.start  # progress
        assert after.end > before.end  # every chunk adds text
        assert after.start <= before.end  # no gap: every character is in some chunk


def test_the_offline_bpe_vocabulary_is_available() -> None:
    # The product relies on real counts; the estimator is only a fallback.
    assert isinstance(TOKENIZER, BpeTokenizer)
    assert TOKENIZER.name == "cl100k_base"
    assert TOKENIZER.count("Hello world") == 2


def test_a_short_document_is_one_chunk() -> None:
    text = paragraph(1)
    assert split_document(text, 1000, 50, TOKENIZER) == [
        Chunk(0, 0, len(text), TOKENIZER.count(text))
    ]


def test_chunks_fit_the_budget_and_cover_the_document() -> None:
    text = document(60)
    chunks = split_document(text, 500, 50, TOKENIZER)
    assert len(chunks) >= TOKENIZER.count(text) // 500
    assert_well_formed(text, chunks, 500, TOKENIZER)


def test_chunks_end_at_paragraph_breaks_when_one_is_near() -> None:
    text = document(60)
    for chunk in split_document(text, 500, 0, TOKENIZER)[:-1]:
        assert text[chunk.end - 2 : chunk.end] == "\n\n", text[chunk.end - 40 : chunk.end]


def test_without_paragraphs_chunks_end_at_sentence_ends() -> None:
    text = " ".join(paragraph(n) for n in range(40))
    for chunk in split_document(text, 300, 0, TOKENIZER)[:-1]:
        assert text[chunk.start : chunk.end].rstrip().endswith(".")


def test_overlap_repeats_whole_sentences_within_the_overlap_budget() -> None:
    text = " ".join(paragraph(n) for n in range(40))
    chunks = split_document(text, 300, 60, TOKENIZER)
    for before, after in itertools.pairwise(chunks):
        shared = text[after.start : before.end]
        assert shared, "consecutive chunks should overlap"
        assert TOKENIZER.count(shared) <= 60 + 2  # unit counts are summed; joined text may merge
        assert shared.rstrip().endswith(".")  # whole sentences
        assert text[after.start - 1] == " "  # starts at a sentence start


def test_no_overlap_means_chunks_tile_the_document() -> None:
    text = document(30)
    chunks = split_document(text, 400, 0, TOKENIZER)
    assert "".join(text[c.start : c.end] for c in chunks) == text


def test_a_sentence_longer_than_a_chunk_is_cut_on_token_boundaries() -> None:
    text = "word " * 3000  # no sentence end at all
    chunks = split_document(text, 256, 0, TOKENIZER)
    assert_well_formed(text, chunks, 256, TOKENIZER)
    assert len(chunks) >= 3000 // 256
    for chunk in chunks:
        # Cut between tokens: each chunk's tokens are a run of the whole text's tokens.
        assert text[chunk.start : chunk.end].startswith(("word", " word"))


def test_a_word_cut_mid_way_that_re_encodes_longer_is_cut_again() -> None:
    # Found by hypothesis: BPE merges inside one long word depend on the whole word, so a cut
    # piece re-encoded alone counted more tokens than its window.
    text = "alpha" * 4 + "x" * 300 + "漢字"
    chunks = split_document(text, 16, 0, TOKENIZER)
    assert_well_formed(text, chunks, 16, TOKENIZER)


def test_multibyte_text_is_never_cut_inside_a_character() -> None:
    text = "漢字とかなの文" * 800 + "🙂" * 500
    chunks = split_document(text, 200, 20, TOKENIZER)
    assert_well_formed(text, chunks, 200, TOKENIZER)
    assert "".join(text[c.start : c.end] for c in chunks).encode("utf-8")  # valid text


def test_50k_token_document_splits_into_the_expected_number_of_chunks() -> None:
    text = document(700)
    total = TOKENIZER.count(text)
    assert total >= 50_000
    chunks = split_document(text, 8000, 200, TOKENIZER)
    assert_well_formed(text, chunks, 8000, TOKENIZER)
    # Chunks are at least MIN_FILL full, so the count is bounded on both sides.
    assert total // 8000 + 1 <= len(chunks) <= total // (8000 * 6 // 10 - 200) + 1


@pytest.mark.parametrize("size, overlap", [(8, 0), (100, 30)])
def test_budgets_are_checked(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        split_document("text", size, overlap, TOKENIZER)


def test_the_estimating_fallback_also_respects_the_budget() -> None:
    tok = EstimatingTokenizer()
    text = document(50) + " " + "x" * 5000
    chunks = split_document(text, 300, 30, tok)
    assert_well_formed(text, chunks, 300, tok)


words = st.sampled_from(
    ["alpha", "beta", "gamma.", "delta!", "epsilon?", "\n", "\n\n", "ü", "🙂", "x" * 300, "漢字"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(words, min_size=1, max_size=600),
    max_tokens=st.integers(min_value=16, max_value=200),
    overlap_share=st.integers(min_value=0, max_value=4),
)
def test_any_text_gives_well_formed_chunks(
    parts: list[str], max_tokens: int, overlap_share: int
) -> None:
    text = " ".join(parts)
    overlap = max_tokens * overlap_share // 16
    chunks = split_document(text, max_tokens, overlap, TOKENIZER)
    assert_well_formed(text, chunks, max_tokens, TOKENIZER)


def test_hard_cut_ends_when_tokens_straddle_characters() -> None:
    # "🙂alpha" is 3 tokens, yet no token boundary falls between its characters: with a
    # one-token window no cut point exists, and the cutter once recursed until RecursionError.
    from llmq.longdocs.chunking import _hard_cut

    text = "🙂alpha"
    assert TOKENIZER.count(text) > 1 and TOKENIZER.cut_points(text, 1) == []
    pieces = _hard_cut(text, 1, 1, TOKENIZER)
    assert "".join(text[a:b] for a, b, _ in pieces) == text
    assert [a for a, _, _ in pieces[1:]] == [b for _, b, _ in pieces[:-1]]  # contiguous
    assert all(n <= 1 or b - a == 1 for a, b, n in pieces)

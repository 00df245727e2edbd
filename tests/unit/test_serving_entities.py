"""Token tags -> word tags -> entities: BIO rules and character offsets into the original text."""

from __future__ import annotations

import pytest

from serving.entities import WordTag, aggregate, words_from_tokens


def _words(text: str, tags: list[str], scores: list[float] | None = None) -> list[WordTag]:
    """WordTags for whitespace-separated words of `text`."""
    out, pos = [], 0
    for i, word in enumerate(text.split()):
        start = text.index(word, pos)
        pos = start + len(word)
        out.append(WordTag(start, pos, tags[i], scores[i] if scores else 0.9))
    return out


def _summary(text: str, tags: list[str]) -> list[tuple[str, str]]:
    return [(e.type, e.text) for e in aggregate(text, _words(text, tags))]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-PER", "I-PER", "O", "O", "B-LOC"], [("PER", "Ada  Lovelace"), ("LOC", "London")]),
        (["B-PER", "B-PER", "O", "O", "O"], [("PER", "Ada"), ("PER", "Lovelace")]),
        (["I-PER", "I-PER", "O", "O", "I-LOC"], [("PER", "Ada  Lovelace"), ("LOC", "London")]),  # lenient I-
        (["B-PER", "I-LOC", "O", "O", "O"], [("PER", "Ada"), ("LOC", "Lovelace")]),  # type change splits
        (["PER", "PER", "O", "LOC", "LOC"], [("PER", "Ada  Lovelace"), ("LOC", "in London")]),  # IO scheme
        (["O", "O", "O", "O", "O"], []),
    ],
)
def test_bio_rules(tags, expected):
    assert _summary("Ada  Lovelace lived in London", tags) == expected


def test_offsets_slice_the_original_and_score_is_the_mean():
    text = "  Ada  Lovelace!"
    words = [WordTag(2, 5, "B-PER", 0.8), WordTag(7, 15, "I-PER", 0.6), WordTag(15, 16, "O", 0.99)]
    [entity] = aggregate(text, words)
    assert (entity.start, entity.end, entity.text) == (2, 15, "Ada  Lovelace")
    assert entity.score == pytest.approx(0.7)


def test_first_subtoken_decides_and_span_covers_all_subtokens():
    # "Lovelace" split into three sub-tokens; the later ones disagree and only widen the span
    word_ids = [None, 0, 1, 1, 1, None, None]
    offsets = [(0, 0), (0, 3), (4, 8), (8, 12), (12, 16), (0, 0), (0, 0)]
    tags = ["O", "B-PER", "I-PER", "O", "B-LOC", "O", "O"]
    scores = [0.1, 0.9, 0.7, 0.2, 0.3, 0.1, 0.1]
    words = words_from_tokens(word_ids, offsets, tags, scores)
    assert words == [WordTag(0, 3, "B-PER", 0.9), WordTag(4, 16, "I-PER", 0.7)]
    [entity] = aggregate("Ada Lovelace", words)
    assert (entity.type, entity.text) == ("PER", "Ada Lovelace")


def test_with_a_real_fast_tokenizer(tmp_path):
    """Offsets from the tiny (lower-casing) tokenizer still slice the original casing and spacing."""
    from tests.tiny import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    text = "Alice visited  Paris"
    enc = tok(text, return_offsets_mapping=True)
    n = len(enc.input_ids)
    words = words_from_tokens(enc.word_ids(), enc.offset_mapping, ["B-PER"] * n, [0.5] * n)
    assert [(e.text, e.start, e.end) for e in aggregate(text, words)] == [
        ("Alice", 0, 5), ("visited", 6, 13), ("Paris", 15, 20),
    ]

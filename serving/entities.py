"""Token tags -> word tags -> entities with character offsets into the original text.

A word takes the tag of its first sub-token (how token-classification models are trained here);
its span is the union of its sub-tokens' offsets, so casing and spacing come from the input, not
from the tokenizer. Consecutive words merge into one entity under BIO rules: B-X starts one, I-X
continues an open X (or starts one, leniently, after O or another type), O closes it. Tags
without a B-/I- prefix behave like I-.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .schemas import Entity

OUTSIDE = "O"


@dataclass(frozen=True)
class WordTag:
    start: int
    end: int
    tag: str
    score: float


def words_from_tokens(
    word_ids: Sequence[int | None], offsets: Sequence[tuple[int, int]], tags: Sequence[str], scores: Sequence[float],
) -> list[WordTag]:
    """One WordTag per word, in order; special and padding tokens (word id None) are skipped."""
    words: dict[int, WordTag] = {}
    for wid, (start, end), tag, score in zip(word_ids, offsets, tags, scores, strict=True):
        if wid is None:
            continue
        first = words.get(wid)
        if first is None:
            words[wid] = WordTag(start, end, tag, float(score))
        else:  # a later sub-token only widens the span
            words[wid] = WordTag(min(first.start, start), max(first.end, end), first.tag, first.score)
    return [words[k] for k in sorted(words)]


def _split(tag: str) -> tuple[str, str]:
    """('B'|'I', type) for a tag; plain tags continue like I-."""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "I", tag


def aggregate(text: str, words: Sequence[WordTag]) -> list[Entity]:
    entities: list[Entity] = []
    open_type: str | None = None
    span: list[WordTag] = []

    def close() -> None:
        nonlocal open_type, span
        if open_type is not None and span:
            start, end = span[0].start, span[-1].end
            score = sum(w.score for w in span) / len(span)
            entities.append(Entity(type=open_type, text=text[start:end], score=score, start=start, end=end))
        open_type, span = None, []

    for word in words:
        if word.tag == OUTSIDE:
            close()
            continue
        prefix, kind = _split(word.tag)
        if prefix == "B" or kind != open_type:
            close()
            open_type = kind
        span.append(word)
    close()
    return entities

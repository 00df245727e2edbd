from __future__ import annotations

import math

import pytest
import torch

from trainers.metrics import classification_metrics, entities, entity_counts, entity_metrics, lm_metrics


def test_classification_metrics_from_confusion():
    # true x predicted
    c = torch.tensor([[3, 1], [2, 4]])
    m = classification_metrics(c)
    assert m["accuracy"] == pytest.approx(0.7)
    p0, p1 = 3 / 5, 4 / 5
    r0, r1 = 3 / 4, 4 / 6
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert m["macro_precision"] == pytest.approx((p0 + p1) / 2)
    assert m["macro_recall"] == pytest.approx((r0 + r1) / 2)
    assert m["macro_f1"] == pytest.approx((f(p0, r0) + f(p1, r1)) / 2)


def test_entities_bio():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert entities(["I-PER", "O"]) == {("PER", 0, 1)}
    assert entities(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}
    tp, pred, actual = entity_counts(["B-PER", "I-PER", "O"], ["B-PER", "O", "O"])
    assert (tp, pred, actual) == (0, 1, 1)  # a partial span is not a match
    assert entity_metrics(1, 2, 4)["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_lm_perplexity():
    assert lm_metrics(2 * 10, 10)["perplexity"] == pytest.approx(math.exp(2))

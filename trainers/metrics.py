"""Evaluation metrics from counts that can be summed across workers.

Each worker accumulates counts on its validation shard (a confusion matrix, entity matches,
loss and token sums); the loop all-reduces the counts, then these functions turn them into
metrics, so every rank reports identical numbers.
"""

from __future__ import annotations

import math

import torch


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 from a [true, predicted] confusion matrix."""
    c = confusion.double()
    tp = c.diag()
    predicted, actual = c.sum(0), c.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    present = actual > 0  # macro over classes present in the data
    n = max(int(present.sum()), 1)
    total = c.sum().clamp(min=1)
    return {
        "accuracy": float(tp.sum() / total),
        "macro_precision": float(precision[present].sum() / n),
        "macro_recall": float(recall[present].sum() / n),
        "macro_f1": float(f1[present].sum() / n),
    }


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans from BIO/IOB2 tags; a stray I- starts a new entity (conlleval)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        if start is not None and (prefix in ("O", "B") or label != kind):
            spans.add((kind, start, i))
            start, kind = None, None
        if prefix in ("B", "I") and start is None:
            start, kind = i, label
    return spans


def entity_counts(true_tags: list[str], pred_tags: list[str]) -> tuple[int, int, int]:
    """(true positives, predicted, actual) entity counts for one sequence."""
    t, p = entities(true_tags), entities(pred_tags)
    return len(t & p), len(p), len(t)


def entity_metrics(tp: float, predicted: float, actual: float) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def lm_metrics(loss_sum: float, tokens: float) -> dict[str, float]:
    loss = loss_sum / max(tokens, 1.0)
    return {"perplexity": math.exp(min(loss, 50.0))}

"""A classical baseline on the very same splits: TF-IDF features + logistic regression.

It tells a user whether fine-tuning bought anything over a model that trains in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TrainSection
from .data import Splits, load_splits
from .metrics import classification_metrics
from .tasks import get_task


@dataclass(frozen=True)
class HeldOut:
    """The rows a finished classifier is scored on: the test split, or validation when the spec
    holds out no test rows."""

    texts: list[str]
    gold: list[int]  # label ids, in `labels` order
    labels: list[str]


def held_out(train: TrainSection, splits: Splits | None = None) -> HeldOut:
    task = get_task(train.model.task)
    if not task.held_out_baseline:
        raise ValueError(f"held-out scoring of label ids is not defined for {task.name}")
    splits = splits or load_splits(train.data, task, train.model.labels)
    rows, labels = splits.test or splits.validation, splits.labels or []
    index = {x: i for i, x in enumerate(labels)}
    return HeldOut(texts=[r[train.data.text_column] for r in rows],
                   gold=[index[r[train.data.label_column]] for r in rows], labels=labels)


def tfidf_baseline(train: TrainSection, splits: Splits | None = None) -> dict[str, float]:
    """Accuracy and macro P/R/F1 of TF-IDF + logistic regression, trained on the spec's train split
    and scored on its held-out rows (see `held_out`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    splits = splits or load_splits(train.data, get_task(train.model.task), train.model.labels)
    held = held_out(train, splits)
    index = {x: i for i, x in enumerate(held.labels)}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_train = vectorizer.fit_transform([r[train.data.text_column] for r in splits.train])
    clf = LogisticRegression(max_iter=2000, C=4.0)
    clf.fit(x_train, [index[r[train.data.label_column]] for r in splits.train])
    predicted = clf.predict(vectorizer.transform(held.texts))
    return score(held.gold, list(predicted), len(held.labels))


def score(gold: list[int], predicted: list[int], n_classes: int) -> dict[str, float]:
    """Classification metrics for label ids (the same formulas the trainer reports)."""
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    for g, p in zip(gold, predicted, strict=True):
        confusion[g, p] += 1
    return classification_metrics(confusion)

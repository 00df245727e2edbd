"""A classical baseline on the very same splits: TF-IDF features + logistic regression.

It tells a user whether fine-tuning bought anything over a model that trains in seconds.
"""

from __future__ import annotations

import torch

from .config import TrainSection
from .data import load_splits
from .metrics import classification_metrics


def tfidf_baseline(train: TrainSection, split: str = "test") -> dict[str, float]:
    """Accuracy and macro P/R/F1 of TF-IDF + logistic regression, trained on the spec's train split
    and scored on `split` ('test', or 'validation' when the spec holds out no test rows)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if train.model.task != "sequence-classification":
        raise ValueError("the TF-IDF baseline is for sequence classification")
    splits = load_splits(train.data, train.model.task, train.model.labels)
    rows = getattr(splits, split)
    col = train.data.text_column
    label_col = train.data.label_column
    labels = splits.labels or []
    index = {x: i for i, x in enumerate(labels)}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_train = vectorizer.fit_transform([r[col] for r in splits.train])
    clf = LogisticRegression(max_iter=2000, C=4.0)
    clf.fit(x_train, [index[r[label_col]] for r in splits.train])
    predicted = clf.predict(vectorizer.transform([r[col] for r in rows]))
    return score([index[r[label_col]] for r in rows], list(predicted), len(labels))


def score(gold: list[int], predicted: list[int], n_classes: int) -> dict[str, float]:
    """Classification metrics for label ids (the same formulas the trainer reports)."""
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    for g, p in zip(gold, predicted, strict=True):
        confusion[g, p] += 1
    return classification_metrics(confusion)

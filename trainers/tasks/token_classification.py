"""Token classification (NER): one BIO tag per word, the first sub-token of each word labelled."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .base import IGNORE, Task
from .sequence_classification import _label_head

if TYPE_CHECKING:
    import torch

    from ..config import DataSection


class TokenClassification(Task):
    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    has_labels = True
    metric_modes = {"loss": "min", "precision": "max", "recall": "max", "f1": "max"}
    default_metric = "eval_f1"
    routes = ("/v1/tag",)
    example_request = ("/v1/tag", '{"inputs": ["Alice visited Paris"]}')
    needs_fast_tokenizer = True
    onnx_exportable = True

    def columns(self, data: DataSection) -> list[str]:
        return [data.tokens_column, data.tags_column]

    def clean_row(self, row: dict[str, Any], data: DataSection, where: str) -> dict[str, Any]:
        tokens = _as_list(row[data.tokens_column], where, data.tokens_column)
        tags = _as_list(row[data.tags_column], where, data.tags_column)
        if len(tokens) != len(tags) or not tokens:
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; each word needs one tag")
        return {"tokens": tokens, "tags": tags}

    def labels_in(self, row: dict[str, Any], data: DataSection) -> list[str]:
        return row["tags"]

    def encode(self, rows, tokenizer, data: DataSection, labels: list[str] | None) -> list[dict]:
        """Label the first sub-token of each word; ignore the rest (and special tokens)."""
        label2id = {x: i for i, x in enumerate(labels or [])}
        enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True,
                        max_length=data.max_length)
        out = []
        for i, r in enumerate(rows):
            ids, prev = [], None
            for w in enc.word_ids(i):
                ids.append(IGNORE if w is None or w == prev else label2id[r["tags"][w]])
                prev = w
            out.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": ids})
        return out

    def head_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        return _label_head(labels)

    def count_size(self, labels: list[str] | None) -> int:
        return 3  # true positives, predicted and actual entities

    def count(self, logits: torch.Tensor, gold: torch.Tensor, labels: list[str] | None) -> torch.Tensor:
        import torch

        from ..metrics import entity_counts

        names = labels or []
        counts = torch.zeros(3, dtype=torch.float64)
        for g_row, p_row in zip(gold.cpu(), logits.argmax(-1).cpu(), strict=True):
            keep = g_row != IGNORE
            true = [names[i] for i in g_row[keep].tolist()]
            pred = [names[i] for i in p_row[keep].tolist()]
            counts += torch.tensor(entity_counts(true, pred), dtype=torch.float64)
        return counts

    def scores(self, loss_sum: float, n: float, counts: torch.Tensor, labels: list[str] | None) -> dict[str, float]:
        from ..metrics import entity_metrics

        return entity_metrics(*counts.tolist())


def _as_list(value: Any, where: str, what: str) -> list[str]:
    """A list of words or tags: a list, a JSON list, or space-separated text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{where}: {what} is not a valid JSON list: {text[:60]!r}") from None
        else:
            value = text.split()
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: {what} must be a list, got {type(value).__name__}")
    return [str(v) for v in value]

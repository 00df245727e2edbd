"""Sequence classification: one label per text (or text pair), e.g. sentiment or topic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import IGNORE, Task

if TYPE_CHECKING:
    import torch

    from ..config import DataSection


class SequenceClassification(Task):
    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    has_labels = True
    metric_modes = {"loss": "min", "accuracy": "max", "macro_precision": "max", "macro_recall": "max",
                    "macro_f1": "max"}
    default_metric = "eval_macro_f1"
    routes = ("/v1/classify",)
    example_request = ("/v1/classify", '{"inputs": ["I love this!", "this is awful"]}')
    held_out_baseline = True
    onnx_exportable = True

    def columns(self, data: DataSection) -> list[str]:
        return [data.text_column, *([data.text_pair_column] if data.text_pair_column else []), data.label_column]

    def labels_in(self, row: dict[str, Any], data: DataSection) -> list[str]:
        return [row[data.label_column]]

    def encode(self, rows, tokenizer, data: DataSection, labels: list[str] | None) -> list[dict]:
        label2id = {x: i for i, x in enumerate(labels or [])}
        texts = [r[data.text_column] for r in rows]
        pairs = [r[data.text_pair_column] for r in rows] if data.text_pair_column else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=data.max_length)
        return [
            {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": label2id[r[data.label_column]]}
            for i, r in enumerate(rows)
        ]

    def ignored_labels(self, encoded: dict[str, Any]) -> Any:
        return IGNORE

    def head_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        return _label_head(labels)

    def count_size(self, labels: list[str] | None) -> int:
        return len(labels or []) ** 2  # the confusion matrix, flattened

    def count(self, logits: torch.Tensor, gold: torch.Tensor, labels: list[str] | None) -> torch.Tensor:
        import torch

        n = len(labels or [])
        keep = gold != IGNORE
        pred = logits.argmax(-1)[keep].cpu()
        return torch.bincount(gold[keep].cpu() * n + pred, minlength=n * n).double()

    def scores(self, loss_sum: float, n: float, counts: torch.Tensor, labels: list[str] | None) -> dict[str, float]:
        from ..metrics import classification_metrics

        k = len(labels or [])
        return classification_metrics(counts.reshape(k, k))


def _label_head(labels: list[str] | None) -> dict[str, Any]:
    """A new head over `labels`, with their names in the saved config (pipelines show them)."""
    if not labels:
        raise ValueError("a classification head needs labels")
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "ignore_mismatched_sizes": True,  # a new head replaces whatever head the checkpoint had
    }

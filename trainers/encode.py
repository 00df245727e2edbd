"""Pad encoded rows into batches (dynamic padding). How rows become token ids is each task's
`encode` (trainers/tasks/)."""

from __future__ import annotations

from typing import Any

import torch

from .tasks import IGNORE


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding)."""
    width = max(len(b["input_ids"]) for b in batch)
    out: dict[str, Any] = {
        "input_ids": torch.tensor([b["input_ids"] + [pad_id] * (width - len(b["input_ids"])) for b in batch]),
        "attention_mask": torch.tensor([b["attention_mask"] + [0] * (width - len(b["attention_mask"])) for b in batch]),
    }
    if isinstance(batch[0]["labels"], list):
        out["labels"] = torch.tensor([b["labels"] + [IGNORE] * (width - len(b["labels"])) for b in batch])
    else:
        out["labels"] = torch.tensor([b["labels"] for b in batch])
    return out

"""Turn checked rows into token ids per task, and pad batches dynamically."""

from __future__ import annotations

from typing import Any

import torch

from .config import DataSection, Task
from .errors import DataError

IGNORE = -100  # label id the loss skips (sub-tokens after the first, prompt tokens, padding)


def encode_rows(rows: list[dict], tokenizer, data: DataSection, task: Task, labels: list[str] | None) -> list[dict]:
    if task == "sequence-classification":
        return _encode_classification(rows, tokenizer, data, labels or [])
    if task == "token-classification":
        return _encode_tokens(rows, tokenizer, data, labels or [])
    return _encode_lm(rows, tokenizer, data)


def _encode_classification(rows, tokenizer, data: DataSection, labels: list[str]) -> list[dict]:
    label2id = {x: i for i, x in enumerate(labels)}
    texts = [r[data.text_column] for r in rows]
    pairs = [r[data.text_pair_column] for r in rows] if data.text_pair_column else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=data.max_length)
    return [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
         "labels": label2id[r[data.label_column]]}
        for i, r in enumerate(rows)
    ]


def _encode_tokens(rows, tokenizer, data: DataSection, labels: list[str]) -> list[dict]:
    """Label the first sub-token of each word; ignore the rest (and special tokens)."""
    label2id = {x: i for i, x in enumerate(labels)}
    enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=data.max_length)
    out = []
    for i, r in enumerate(rows):
        ids, prev = [], None
        for w in enc.word_ids(i):
            ids.append(IGNORE if w is None or w == prev else label2id[r["tags"][w]])
            prev = w
        out.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": ids})
    return out


def _encode_lm(rows, tokenizer, data: DataSection) -> list[dict]:
    """prompt + completion + eos; loss on the completion (and eos) only."""
    out = []
    for r in rows:
        if "messages" in r:
            if not tokenizer.chat_template:
                raise DataError("train.data.messages_column is set but the tokenizer has no chat template; "
                                "use prompt/completion columns instead")
            prompt = tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
            completion = r["messages"][-1]["content"]
        else:
            prompt, completion = r[data.prompt_column], " " + r[data.completion_column]
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if tokenizer.bos_token_id is not None and "messages" not in r:
            p = [tokenizer.bos_token_id] + p
        ids = (p + c)[: data.max_length]
        lab = ([IGNORE] * len(p) + c)[: data.max_length]
        if all(x == IGNORE for x in lab):
            continue  # the prompt alone fills max_length: nothing to learn from this row
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": lab})
    if not out:
        raise DataError(f"every prompt is at least train.data.max_length ({data.max_length}) tokens; raise it")
    return out


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

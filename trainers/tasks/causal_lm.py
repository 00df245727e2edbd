"""Causal-LM supervised fine-tuning: prompt -> completion (or chat messages), loss on the
completion only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .base import IGNORE, Task

if TYPE_CHECKING:
    import torch

    from ..config import DataSection

PROBE_VOCAB_SLICE = 64  # a vocabulary-sized row per position is too big to keep in probe.json


class CausalLM(Task):
    name = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    has_labels = False
    metric_modes = {"loss": "min", "perplexity": "min"}
    default_metric = "eval_loss"
    routes = ("/v1/completions", "/v1/chat/completions")
    example_request = ("/v1/completions", '{"prompt": "Hello", "max_tokens": 16}')
    generative = True

    def columns(self, data: DataSection) -> list[str]:
        return [data.messages_column] if data.messages_column else [data.prompt_column, data.completion_column]

    def clean_row(self, row: dict[str, Any], data: DataSection, where: str) -> dict[str, Any]:
        if not data.messages_column:
            return super().clean_row(row, data, where)
        msgs = row[data.messages_column]
        msgs = json.loads(msgs) if isinstance(msgs, str) else msgs
        if not msgs or not isinstance(msgs, list) or msgs[-1].get("role") != "assistant":
            raise DataError(f"{where}: messages must be a list ending with an assistant turn")
        return {"messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]}

    def encode(self, rows, tokenizer, data: DataSection, labels: list[str] | None) -> list[dict]:
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

    def prepare_model(self, model) -> None:
        if model.config.pad_token_id is None:  # decoder-only models often ship without one
            model.config.pad_token_id = model.config.eos_token_id

    def align(self, logits: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, :-1], gold[:, 1:]

    def scores(self, loss_sum: float, n: float, counts: torch.Tensor, labels: list[str] | None) -> dict[str, float]:
        from ..metrics import lm_metrics

        return lm_metrics(loss_sum, n)

    def probe_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, :, :PROBE_VOCAB_SLICE]

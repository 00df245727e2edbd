"""The model behind a replica: load a checkpoint once, then classify, tag or generate whole batches.

No Ray here. A replica owns one Engine and calls it from a single worker thread: fast tokenizers
and torch modules are not safe to use from several threads at once, and one thread keeps the
event loop free to queue the next batch while this one runs.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainers.checkpoint import load_for_inference, read_manifest
from trainers.errors import CheckpointError, UserError

from .config import ServeSection
from .entities import aggregate, words_from_tokens
from .schemas import Entity


@dataclass(frozen=True)
class GenerationItem:
    prompt: str
    chat: bool  # rendered by the chat template, which already holds its special tokens
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()

    @property
    def sampling_key(self) -> tuple:
        """Items that share this key can run in one `generate` call."""
        return (self.max_tokens, self.temperature, self.top_p, self.stop)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Rejected:
    """An item that cannot be served as asked (the route answers 422 with the reason)."""

    reason: str


def device_and_dtype(serve: ServeSection):
    import torch

    if serve.num_gpus_per_replica > 0:
        if not torch.cuda.is_available():
            raise UserError(
                f"serve.num_gpus_per_replica is {serve.num_gpus_per_replica} but torch in the replica sees no "
                "CUDA device (a CPU build of torch?). Install a CUDA torch on the nodes or set it to 0."
            )
        device = "cuda"
    else:
        device = "cpu"
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if serve.dtype != "auto":
        return device, named[serve.dtype]
    if device == "cpu":
        return device, torch.float32
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Engine:
    def __init__(self, model, tokenizer, *, task: str, labels: list[str] | None, device: str) -> None:
        self.model, self.tokenizer, self.task, self.labels, self.device = model, tokenizer, task, labels, device
        config = model.config
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        limits = [n for n in (tokenizer.model_max_length, self.max_positions) if n and n < 1_000_000]
        self.max_length = min(limits) if limits else None
        if task != "causal-lm" and (not labels or config.num_labels != len(labels)):
            raise CheckpointError(
                f"the checkpoint's manifest lists labels {labels} but its model has {config.num_labels} outputs"
            )
        if task == "token-classification" and not tokenizer.is_fast:
            raise CheckpointError("token classification needs a fast tokenizer (for character offsets)")
        if task == "causal-lm":
            tokenizer.padding_side = "left"  # generation appends to the right end of every row
        eos = model.generation_config.eos_token_id if task == "causal-lm" else None
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    @classmethod
    def load(cls, checkpoint: str | Path, serve: ServeSection) -> Engine:
        import torch

        device, dtype = device_and_dtype(serve)
        manifest = read_manifest(checkpoint)
        model, tokenizer, _ = load_for_inference(checkpoint, dtype=dtype)
        model.to(device)
        if serve.quantize == "int8":
            with warnings.catch_warnings():  # torch marks torch.ao deprecated in favour of torchao (not a dependency)
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model.eval()
        return cls(model, tokenizer, task=manifest.task, labels=manifest.labels, device=device)

    @property
    def has_chat_template(self) -> bool:
        return self.task == "causal-lm" and bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, texts: list[str], **kwargs: Any):
        return self.tokenizer(
            texts, padding=True, truncation=self.max_length is not None, max_length=self.max_length,
            return_tensors="pt", **kwargs,
        )

    def classify(self, texts: list[str]) -> list[list[float]]:
        """Per text, the probability of each label in label-id order."""
        import torch

        with torch.inference_mode():
            logits = self.model(**self._encode(texts).to(self.device)).logits
        return logits.float().softmax(-1).tolist()

    def tag(self, texts: list[str]) -> list[list[Entity]]:
        import torch

        enc = self._encode(texts, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping").tolist()
        with torch.inference_mode():
            logits = self.model(**enc.to(self.device)).logits
        scores, ids = logits.float().softmax(-1).max(-1)
        scores, ids = scores.tolist(), ids.tolist()
        out = []
        for i, text in enumerate(texts):
            tags = [self.labels[j] for j in ids[i]]
            out.append(aggregate(text, words_from_tokens(enc.word_ids(i), offsets[i], tags, scores[i])))
        return out

    def generate(self, items: list[GenerationItem]) -> list[Generation | Rejected]:
        """Items are encoded one by one (to check each against the context) and generated in groups
        that share sampling settings; the results come back in the items' order."""
        results: list[Generation | Rejected | None] = [None] * len(items)
        groups: dict[tuple, list[tuple[int, list[int]]]] = defaultdict(list)
        for i, item in enumerate(items):
            ids = self.tokenizer(item.prompt, add_special_tokens=not item.chat).input_ids
            if not ids and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id]
            if not ids:
                results[i] = Rejected("the prompt is empty and this tokenizer has no BOS token to start from")
            elif self.max_positions and len(ids) + item.max_tokens > self.max_positions:
                results[i] = Rejected(
                    f"the prompt is {len(ids)} tokens; with max_tokens {item.max_tokens} that exceeds the "
                    f"model's context of {self.max_positions} tokens. Shorten the prompt or lower max_tokens."
                )
            else:
                groups[item.sampling_key].append((i, ids))
        for members in groups.values():
            first = items[members[0][0]]
            for (i, _), gen in zip(members, self._generate_group(first, [ids for _, ids in members]), strict=True):
                results[i] = gen
        return results  # type: ignore[return-value]

    def _generate_group(self, params: GenerationItem, prompts: list[list[int]]) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        width = batch["input_ids"].shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids) or None, "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tokenizer, params.stop, width)])
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        finished_ids = self.eos_ids | {self.tokenizer.pad_token_id}
        gens = []
        for row, prompt in zip(out[:, width:].tolist(), prompts, strict=True):
            cut = next((k for k, t in enumerate(row) if t in finished_ids), None)
            tokens = row if cut is None else row[:cut]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            hits = [text.find(s) for s in params.stop if s in text]
            if hits:
                text, reason = text[: min(hits)], "stop"
            else:
                reason = "stop" if cut is not None else "length"
            gens.append(Generation(text, reason, len(prompt), len(tokens)))
        return gens

    def probe(self) -> None:
        """One forward pass on a tiny input; raises when the model is not usable."""
        import torch

        with torch.inference_mode():
            logits = self.model(**self._encode(["ok"]).to(self.device)).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError("the model returned non-finite logits on the health-check input")


class _StopStrings:
    """Ends a row once its completion contains a stop string. Only the last few tokens are decoded
    per step: a token decodes to at least one character, so a window of twice the longest stop
    string (plus slack for spaces the decoder inserts) covers any match."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_width
        self.window = 2 * max(len(s) for s in stops) + 4

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tails = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)

"""The model behind a replica: load a checkpoint once, then classify, tag or generate whole batches.

No Ray here. A replica owns one Engine and calls it from a single worker thread: fast tokenizers
and torch modules are not safe to use from several threads at once, and one thread keeps the
event loop free to queue the next batch while this one runs.

One bad item never fails its batch: `run_isolated` reruns a failed batch item by item, so only
the item that cannot be run comes back as `Rejected` (the route answers 422 naming it).

With `serve.adapters` the engine holds one base model (peft, unmerged) and any number of LoRA
adapters on it, switched per group of items; without, the checkpoint is loaded merged as before.

Generation runs in groups of items that share sampling settings. Each row has its own token
limit and cancel flag (`_RowControl`), stop strings go through `generate(stop_strings=...)`,
and a streamed item receives its text from transformers' `TextStreamer` (one per row, fed by
`_Fanout`) as it is produced, with any text that could still become a stop string held back.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from trainers.checkpoint import MODEL_DIR, SERVABLE, load_for_inference, read_manifest, read_train
from trainers.errors import CheckpointError, UserError
from trainers.model import load_base_model, load_tokenizer, resolve_model_path
from trainers.storage import cached_copy
from trainers.tasks import Task, get_task

from .adapters import check_adapters
from .config import ServeSection
from .entities import aggregate, words_from_tokens
from .schemas import Entity

log = logging.getLogger(__name__)

MAIN_ADAPTER = "default"  # peft's name for the app's own adapter (a module name: no dots)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Rejected:
    """An item that cannot be served as asked; the route answers 422 with the reason."""

    reason: str
    kind: str = "unprocessable_input"


def run_isolated(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R | Rejected]:
    """fn(items), or, when that raises, fn on each item alone: only the items that fail alone are
    Rejected (with the exception's type and a short message), the rest get their normal result."""
    try:
        return list(fn(items))
    except Exception as err:
        if len(items) == 1:
            log.warning("an item failed: %s", err, exc_info=True)
            return [_rejected(err)]
    out: list[R | Rejected] = []
    for item in items:
        try:
            out.append(fn([item])[0])
        except Exception as err:
            log.warning("an item failed: %s", err, exc_info=True)
            out.append(_rejected(err))
    return out


def _rejected(err: Exception) -> Rejected:
    text = str(err).replace("\n", " ")
    text = text[:200] + ("..." if len(text) > 200 else "")
    return Rejected(f"the model could not process this input ({type(err).__name__}: {text})")


@dataclass(frozen=True)
class TokenScore:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenScore, ...] | None = None
    cancelled: bool = False


# What a streamed item's sink receives, from the model thread: START when its group begins
# generating, then (choice index, text) pieces.
START = "start"
StreamEvent = Any


@dataclass(eq=False)
class GenerationItem:
    prompt: str
    chat: bool  # rendered by the chat template, which already holds its special tokens
    max_tokens: int | None  # None: as many as `limit` and the model's context allow
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None  # alternatives per token; 0: the chosen token's only
    adapter: str | None = None
    limit: int = 256  # serve.max_new_tokens
    sink: Callable[[StreamEvent], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def group_key(self) -> tuple:
        """Items that share this key can run in one `generate` call. A seeded item runs alone, so
        its answer does not depend on what it was batched with."""
        return (self.adapter, self.temperature, self.top_p, self.stop, self.logprobs,
                id(self) if self.seed is not None else None)


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
    def __init__(self, model, tokenizer, *, task: Task, labels: list[str] | None, device: str,
                 adapters: dict[str, str] | None = None) -> None:
        self.model, self.tokenizer, self.task, self.labels, self.device = model, tokenizer, task, labels, device
        # served adapter name -> its model directory; None: a plain (merged) model
        self.adapter_dirs = adapters
        self._internal = {name: f"adapter_{i}" for i, name in enumerate(adapters or {})}
        config = model.config
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        limits = [n for n in (tokenizer.model_max_length, self.max_positions) if n and n < 1_000_000]
        self.max_length = min(limits) if limits else None
        if task.has_labels and (not labels or config.num_labels != len(labels)):
            raise CheckpointError(
                f"the checkpoint's manifest lists labels {labels} but its model has {config.num_labels} outputs"
            )
        if task.needs_fast_tokenizer and not tokenizer.is_fast:
            raise CheckpointError("token classification needs a fast tokenizer (for character offsets)")
        if task.generative:
            tokenizer.padding_side = "left"  # generation appends to the right end of every row
        eos = model.generation_config.eos_token_id if task.generative else None
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._stop_strings_work: dict[tuple[str, ...], bool] = {}
        self.tokens_generated = 0
        self.generations_cancelled = 0

    @classmethod
    def load(cls, checkpoint: str | Path, serve: ServeSection) -> Engine:
        import torch

        device, dtype = device_and_dtype(serve)
        if serve.backend == "onnx":
            from .onnx_backend import load_onnx

            model, tokenizer, manifest = load_onnx(checkpoint, serve)
            return cls(model, tokenizer, task=get_task(manifest.task), labels=manifest.labels, device="cpu")
        if serve.adapters:
            return cls._load_adapters(checkpoint, serve, device, dtype)
        loaded = load_for_inference(checkpoint, dtype=dtype)
        model = loaded.model.to(device)
        if serve.quantize == "int8":
            with warnings.catch_warnings():  # torch marks torch.ao deprecated in favour of torchao (not a dependency)
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model.eval()
        return cls(model, loaded.tokenizer, task=get_task(loaded.manifest.task), labels=loaded.manifest.labels,
                   device=device)

    @classmethod
    def _load_adapters(cls, uri: str | Path, serve: ServeSection, device: str, dtype) -> Engine:
        """One base model, unmerged, with the app's adapter resident and the others loaded on demand.
        Checkpoints in cloud storage are copied once per node (their servable part), as without adapters."""
        from peft import PeftModel

        check_adapters(uri, serve.adapters)
        checkpoint = cached_copy(uri, include=SERVABLE)
        manifest, train = read_manifest(checkpoint), read_train(checkpoint)
        task = get_task(manifest.task)
        base = load_base_model(resolve_model_path(manifest.base_model), task, manifest.labels,
                               trust_remote_code=train.model.trust_remote_code, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(checkpoint / MODEL_DIR), adapter_name=MAIN_ADAPTER)
        model.to(device).eval()
        dirs = {a.name: str(cached_copy(a.checkpoint, include=SERVABLE) / MODEL_DIR) for a in serve.adapters}
        return cls(model, load_tokenizer(str(checkpoint / MODEL_DIR)), task=task, labels=manifest.labels,
                   device=device, adapters=dirs)

    # --- adapters ---------------------------------------------------------------------------

    @property
    def loaded_adapters(self) -> list[str]:
        if self.adapter_dirs is None:
            return []
        present = set(self.model.peft_config)
        return [name for name, internal in self._internal.items() if internal in present]

    def load_adapter(self, name: str) -> None:
        internal = self._internal[name]
        if internal not in self.model.peft_config:
            self.model.load_adapter(self.adapter_dirs[name], adapter_name=internal)
            self.model.eval()

    def unload_adapter(self, name: str) -> None:
        internal = self._internal.get(name)
        if internal is not None and internal in self.model.peft_config:
            self.model.set_adapter(MAIN_ADAPTER)
            self.model.delete_adapter(internal)

    def _use(self, adapter: str | None) -> None:
        if self.adapter_dirs is None:
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} requested from an engine without adapters")
            return
        if adapter is not None:
            self.load_adapter(adapter)  # an adapter evicted meanwhile comes back
        self.model.set_adapter(MAIN_ADAPTER if adapter is None else self._internal[adapter])

    # --- classification and tagging ---------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return self.task.generative and bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, texts: list[str], **kwargs: Any):
        return self.tokenizer(
            texts, padding=True, truncation=self.max_length is not None, max_length=self.max_length,
            return_tensors="pt", **kwargs,
        )

    def classify(self, texts: list[str], adapter: str | None = None) -> list[list[float]]:
        """Per text, the probability of each label in label-id order."""
        import torch

        self._use(adapter)
        with torch.inference_mode():
            logits = self.model(**self._encode(texts).to(self.device)).logits
        return logits.float().softmax(-1).tolist()

    def tag(self, texts: list[str], adapter: str | None = None) -> list[list[Entity]]:
        import torch

        self._use(adapter)
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

    # --- generation -------------------------------------------------------------------------

    def generate(self, items: list[GenerationItem]) -> list[list[Generation] | Rejected]:
        """Per item, its n choices (or why it cannot run), in the items' order. Items are encoded
        one by one (to check each against the context) and generated in groups (`group_key`)."""
        results: list[list[Generation] | Rejected | None] = [None] * len(items)
        groups: dict[tuple, list[tuple[int, list[int], int]]] = defaultdict(list)
        for i, item in enumerate(items):
            checked = self._checked_prompt(item)
            if isinstance(checked, Rejected):
                results[i] = checked
                if item.sink is not None:  # a stream answers 422 now, not after the batch
                    item.sink(checked)
            else:
                groups[item.group_key].append((i, *checked))
        for members in groups.values():
            outs = run_isolated(lambda ms: self._generate_group([(items[i], ids, lim) for i, ids, lim in ms]), members)
            for (i, _, _), out in zip(members, outs, strict=True):
                results[i] = out
        return results  # type: ignore[return-value]

    def _checked_prompt(self, item: GenerationItem) -> tuple[list[int], int] | Rejected:
        try:
            ids = self.tokenizer(item.prompt, add_special_tokens=not item.chat).input_ids
        except Exception as err:
            return _rejected(err)
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        if not ids:
            return Rejected("the prompt is empty and this tokenizer has no BOS token to start from", "invalid_request")
        room = self.max_positions - len(ids) if self.max_positions else None
        if item.max_tokens is None:
            limit = item.limit if room is None else min(item.limit, room)
            if limit < 1:
                return Rejected(f"the prompt is {len(ids)} tokens, which fills the model's context of "
                                f"{self.max_positions} tokens. Shorten the prompt.", "context_length_exceeded")
            return ids, limit
        if room is not None and item.max_tokens > room:
            return Rejected(
                f"the prompt is {len(ids)} tokens; with max_tokens {item.max_tokens} that exceeds the "
                f"model's context of {self.max_positions} tokens. Shorten the prompt or lower max_tokens.",
                "context_length_exceeded",
            )
        return ids, item.max_tokens

    def _generate_group(self, members: list[tuple[GenerationItem, list[int], int]]) -> list[list[Generation]]:
        import torch
        from transformers import StoppingCriteriaList, StopStringCriteria

        params = members[0][0]
        rows = [(item, choice, ids, limit) for item, ids, limit in members for choice in range(item.n)]
        batch = self.tokenizer.pad({"input_ids": [r[2] for r in rows]}, padding=True, return_tensors="pt")
        batch = batch.to(self.device)
        width = batch["input_ids"].shape[1]
        criteria: list[Any] = [_RowControl([(r[3], r[0].cancel) for r in rows], width)]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r[3] for r in rows), "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids) or None, "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop and self.stop_strings_supported(params.stop):
            criteria.append(_CompletionOnly(StopStringCriteria(self.tokenizer, list(params.stop)), self.tokenizer,
                                            params.stop, width))
        elif params.stop:  # stop strings transformers' StopStringCriteria cannot map (see _stop_strings_work)
            criteria.append(_StopStrings(self.tokenizer, params.stop, width))
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        finished_ids = self.eos_ids | {self.tokenizer.pad_token_id}
        if any(r[0].sink for r in rows):
            kwargs["streamer"] = _Fanout(self.tokenizer, [(r[0].sink, r[1], r[0].stop, r[3]) for r in rows],
                                         finished_ids)
        if params.logprobs is not None:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        if params.seed is not None:
            torch.manual_seed(params.seed % 2**64)
        self._use(params.adapter)
        for item, _, _ in members:
            if item.sink is not None:
                item.sink(START)
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        sequences = out.sequences if params.logprobs is not None else out
        gens: list[Generation] = []
        for r, (item, _, prompt, limit) in enumerate(rows):
            row = sequences[r, width:].tolist()
            cut = next((k for k, t in enumerate(row) if t in finished_ids), None)
            tokens = (row if cut is None else row[:cut])[:limit]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            hits = [text.find(s) for s in item.stop if s in text]
            if hits:
                text, reason = text[: min(hits)], "stop"
            else:
                reason = "stop" if cut is not None and cut < limit else "length"
            cancelled = item.cancel.is_set()
            self.tokens_generated += len(tokens)
            self.generations_cancelled += int(cancelled)
            scores = None if params.logprobs is None else self._scores(out.logits, r, tokens, params.logprobs)
            gens.append(Generation(text, reason, len(prompt), len(tokens), scores, cancelled))
        per_item, k = [], 0
        for item, _, _ in members:
            per_item.append(gens[k:k + item.n])
            k += item.n
        return per_item

    def stop_strings_supported(self, stops: tuple[str, ...]) -> bool:
        if stops not in self._stop_strings_work:
            if len(self._stop_strings_work) > 1024:
                self._stop_strings_work.clear()
            self._stop_strings_work[stops] = _stop_strings_work(self.tokenizer, stops)
        return self._stop_strings_work[stops]

    def _scores(self, logits, row: int, tokens: list[int], top: int) -> tuple[TokenScore, ...]:
        """Log-softmax of the model's raw logits at each step: the chosen token and the top alternatives."""
        out = []
        for step, token in enumerate(tokens):
            lp = logits[step][row].float().log_softmax(-1)
            alternatives = ()
            if top:
                values, ids = lp.topk(top)
                alternatives = tuple((self.tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(),
                                                                                             ids.tolist(), strict=True))
            out.append(TokenScore(self.tokenizer.decode([token]), float(lp[token]), alternatives))
        return tuple(out)

    def probe(self) -> None:
        """One forward pass on a tiny input; raises when the model is not usable."""
        import torch

        self._use(None)
        with torch.inference_mode():
            logits = self.model(**self._encode(["ok"]).to(self.device)).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError("the model returned non-finite logits on the health-check input")


def _stop_strings_work(tokenizer, stops: tuple[str, ...]) -> bool:
    """Whether transformers' StopStringCriteria can map these stop strings onto this tokenizer's
    vocabulary (it decodes every entry after a fixed prefix, 'abcdef', and needs each stop string's
    characters in the vocabulary). transformers caches the mapping, so this costs one build."""
    from transformers import StopStringCriteria

    try:
        StopStringCriteria(tokenizer, list(stops))
        return True
    except Exception as err:
        log.warning("stop strings %r are matched on decoded text instead of through generate(stop_strings=...): %s",
                    stops, err)
        return False


class _RowControl:
    """Ends each row at its own token limit, or as soon as its client has gone (its cancel flag)."""

    def __init__(self, rows: list[tuple[int, threading.Event]], prompt_width: int) -> None:
        self.rows, self.start = rows, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        made = input_ids.shape[1] - self.start
        return torch.tensor([made >= limit or cancel.is_set() for limit, cancel in self.rows],
                            dtype=torch.bool, device=input_ids.device)


class _CompletionOnly:
    """transformers' StopStringCriteria over the completion only, each hit confirmed on the decoded
    completion. `generate(stop_strings=...)` runs it over prompt and completion together, so a stop
    string that begins in the prompt ('bad' + ' good' for stop ' good') would end a row before the
    completion holds any stop string (the OpenAI API matches completions only); and it reads a
    first word-piece as if a word came before it (' good' for a completion that decodes to
    'good'), which the confirmation filters out. Hits are rare, so the decoding is cheap."""

    def __init__(self, criterion, tokenizer, stops: tuple[str, ...], prompt_width: int) -> None:
        self.criterion, self.tokenizer, self.stops, self.start = criterion, tokenizer, stops, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        completion = input_ids[:, self.start:]
        hits = self.criterion(completion, scores, **kwargs)
        for row in hits.nonzero().flatten().tolist():
            text = self.tokenizer.decode(completion[row], skip_special_tokens=True)
            hits[row] = any(s in text for s in self.stops)
        return hits


class _StopStrings:
    """Fallback for tokenizers StopStringCriteria cannot map: ends a row once its completion's
    last few decoded tokens hold a stop string (a window of twice the longest stop string, plus
    slack for spaces the decoder inserts, covers any match)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_width
        self.window = 2 * max(len(s) for s in stops) + 4

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tails = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class _StopTrimmer:
    """Passes text on as it comes, except a tail that may still grow into a stop string; at a
    stop string it passes what came before and nothing after (OpenAI leaves stops out)."""

    def __init__(self, emit: Callable[[str], None], stops: tuple[str, ...]) -> None:
        self.emit, self.stops, self.buf, self.stopped = emit, stops, "", False

    def feed(self, text: str) -> None:
        if self.stopped or not text:
            return
        self.buf += text
        hits = [self.buf.find(s) for s in self.stops if s in self.buf]
        if hits:
            self._send(self.buf[: min(hits)])
            self.buf, self.stopped = "", True
            return
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        self._send(self.buf[: len(self.buf) - hold])
        self.buf = self.buf[len(self.buf) - hold:]

    def close(self) -> None:
        if not self.stopped:
            self._send(self.buf)
        self.buf, self.stopped = "", True

    def _send(self, text: str) -> None:
        if text:
            self.emit(text)


def _row_streamer(tokenizer, emit: Callable[[str], None], stops: tuple[str, ...]):
    from transformers import TextStreamer

    class RowStreamer(TextStreamer):
        """transformers' TextStreamer for one row, its finished text sent on instead of printed."""

        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
            self.trimmer = _StopTrimmer(emit, stops)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.trimmer.feed(text)
            if stream_end:
                self.trimmer.close()

    return RowStreamer()


class _Fanout:
    """The streamer `generate` sees: it hands each row's new token to that row's TextStreamer
    (TextStreamer itself takes one row only) until the row ends (EOS, padding after a stop or a
    cancel, or its own token limit)."""

    def __init__(self, tokenizer, rows: list[tuple[Callable | None, int, tuple[str, ...], int]],
                 finished_ids: set[int]) -> None:
        self.finished_ids, self.prompt_seen = finished_ids, False
        self.rows = []
        for sink, choice, stops, limit in rows:
            streamer = None
            if sink is not None:
                streamer = _row_streamer(tokenizer, lambda text, s=sink, c=choice: s((c, text)), stops)
            self.rows.append({"streamer": streamer, "limit": limit, "made": 0, "done": sink is None})

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate's first put is the prompt
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row["done"]:
                continue
            if token in self.finished_ids:
                self._finish(row)
                continue
            row["made"] += 1
            row["streamer"].put(value.new_tensor([token]))
            if row["made"] >= row["limit"]:
                self._finish(row)

    def end(self) -> None:
        for row in self.rows:
            if not row["done"]:
                self._finish(row)

    @staticmethod
    def _finish(row: dict) -> None:
        row["done"] = True
        row["streamer"].end()

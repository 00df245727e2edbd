"""Per-worker memory of a training run, estimated from the model's config alone (no weights, no Ray).

For one worker, one ZeRO stage (0-3) and one offload choice, `estimate` gives the bytes of
parameters, gradients, optimizer states, activations and DeepSpeed's buffers, on the GPU and in
host RAM (a CPU run has only host RAM). Parameter counts come from building the model on the
meta device (and wrapping it with peft for LoRA), so they are exact, peft's default target modules
included; activations come from the architecture's dimensions, `train.data.max_length` (an upper
bound: the loop pads each batch to its longest row) and `train.schedule.micro_batch_size`.

Model states follow DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`; `deepspeed_figures` calls them). Where we diverge, and why:
  - LoRA: DeepSpeed's formulas assume every parameter trains (18 bytes each in mixed precision).
    Frozen weights here cost only their own bytes; gradients and optimizer states count the
    trainable parameters only.
  - fp32 (every CPU run): parameters and gradients are 4 bytes, and ZeRO 1-3 still keep a separate
    fp32 copy of each worker's partition (DeepSpeed clones it).
  - ZeRO-3 keeps the 16-bit gradient partition (2 bytes / N) that its "18" omits, and the gathered
    parameters are bounded by `stage3_max_live_parameters` (1e9 by default), not one layer: a
    layer's parameters stay gathered while they will be reused within `stage3_max_reuse_distance`.
  - Buffers DeepSpeed's estimators leave out: the gradient reduce bucket (ZeRO 1-2 allocate
    `reduce_bucket_size` elements per micro-step, twice with overlap_comm; ZeRO-3 once), the
    all-reduce flattening copy of ZeRO-0, torch Adam's temporaries on CPU, the CUDA context.
  - Without zero.Init (our loop loads the model with from_pretrained), ZeRO-3 first moves the whole
    model to each GPU and partitions it there: the `init_device` phase below.
  - Host RAM while loading: the parameters plus the checkpoint's pages, instead of DeepSpeed's
    "4 bytes x params x 1.5" rule. With the optimizer offloaded, each worker's host holds its 16
    bytes / N of optimizer state; DeepSpeed's ZeRO-2 CPU figure does not divide by N.

On CPU the estimate is of live memory: RSS follows it when freed memory goes back to the system
(MALLOC_MMAP_THRESHOLD_=65536). With glibc's default malloc, freed activations stay in its heaps and
RSS measured 1.5-2x higher (bench/plan_accuracy.py).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .config import TrainSection
from .deepspeed import Precision, resolve_precision
from .errors import UserError

GiB = 2**30
MiB = 2**20

# DeepSpeed 0.19 defaults (deepspeed/runtime/zero/config.py); render_config leaves them alone.
REDUCE_BUCKET = 500_000_000
STAGE3_MAX_LIVE = 1_000_000_000
STAGE3_PREFETCH = 50_000_000

# Fixed costs. CPU figures were measured on this project's CPU machine (torch 2.13, DeepSpeed 0.19)
# as the RSS growth that no tensor explains, constant across models, batches and sequence lengths
# (bench/plan_accuracy.py): the first step's thread pools and scratch, and DeepSpeed's ZeRO
# optimizer machinery for stages 1-3. GPU figures are the usual sizes, not measured here.
CPU_RUNTIME = 64 * MiB
CPU_ZERO_RUNTIME = 48 * MiB
CUDA_CONTEXT = 512 * MiB  # device memory torch's allocator does not see (context, cuBLAS workspace)
CUDA_HOST_RUNTIME = 2 * GiB  # host RSS of a process that has initialised CUDA and torch

# Architectures whose blocks are RMSNorm + gated SiLU MLP (Llama-like); others follow BERT/GPT-2.
_GATED_DECODERS = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2"}

# GELU written out in Python (GPT-2's "gelu_new"): autograd keeps tanh's output and both factors too.
_COMPOSITE_GELU = {"gelu_new", "gelu_fast"}

# Published config.json dimensions of the hub models the shipped examples name, so that `zerotune
# plan` works on a machine that cannot reach the hub (this one, CI). Only the architecture is kept;
# a model not listed needs its config.json: a local directory, pkg://, or the hub cache.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "FacebookAI/roberta-base": {
        "model_type": "roberta", "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
        "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    },
    "google-bert/bert-base-cased": {
        "model_type": "bert", "vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
    },
    "meta-llama/Llama-3.1-8B-Instruct": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "attention_dropout": 0.0, "dtype": "bfloat16",
        "bos_token_id": 128000, "eos_token_id": 128009,  # the hub lists three; one is enough to size it
    },
}


class ModelConfigError(UserError):
    """The model's config.json cannot be read, so nothing can be estimated."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(_Frozen):
    """What the estimate needs to know about the model, read from its config (no weights)."""

    source: str  # where the config came from
    model_type: str
    decoder: bool  # Llama-like block (RMSNorm, gated MLP) rather than BERT/GPT-2-like
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    attention_dropout: bool
    hidden_dropout: bool
    mlp_activation_tensors: int  # I-wide tensors the MLP's activation keeps: 1 (fused GELU/SiLU) or 4 (gelu_new)
    checkpoint_bytes: int  # bytes per parameter as stored (the config's dtype; fp32 when absent)
    total_params: int
    trainable_params: int
    largest_layer_params: int  # DeepSpeed's "largest layer": most parameters held by one module
    largest_trainable_tensor: int
    lora_adapters: int  # LoRA-adapted linears in the whole model (0: full fine-tuning)
    lora_input_features: int  # their input widths, summed
    lora_r: int
    lora_dropout: bool


class ZeroOption(_Frozen):
    stage: Literal[0, 1, 2, 3]
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def label(self) -> str:
        off = [n for n, on in (("opt", self.offload_optimizer), ("param", self.offload_params)) if on]
        return f"ZeRO-{self.stage}" + (f" +{'+'.join(off)}" if off else "")


# Every choice DeepSpeedSection accepts, cheapest first within a stage.
ZERO_OPTIONS: tuple[ZeroOption, ...] = (
    ZeroOption(stage=0),
    ZeroOption(stage=1), ZeroOption(stage=1, offload_optimizer=True),
    ZeroOption(stage=2), ZeroOption(stage=2, offload_optimizer=True),
    ZeroOption(stage=3), ZeroOption(stage=3, offload_optimizer=True), ZeroOption(stage=3, offload_params=True),
    ZeroOption(stage=3, offload_optimizer=True, offload_params=True),
)


class Footprint(_Frozen):
    """Bytes in one place (a GPU, or host RAM) for one worker.

    A step has two peaks: the end of forward (activations alive) and the optimizer step (activations
    gone, gradients and the step's temporaries alive). `peak` is the larger of the two.
    """

    params: int = 0
    gradients: int = 0
    gradients_held: bool = False  # ZeRO 2-3 keep a gradient partition buffer; ZeRO 0-1 free grads each step
    optimizer: int = 0  # Adam moments, fp32 master copy and fp32 gradients
    activations: int = 0
    buffers: int = 0  # held through the step: reduce buckets, gathered ZeRO-3 parameters, runtime
    step_workspace: int = 0  # only after backward (flattening, Adam temporaries), when activations are gone

    @property
    def peak(self) -> int:
        held = self.params + self.optimizer + self.buffers
        forward = self.activations + (self.gradients if self.gradients_held else 0)
        return held + max(forward, self.gradients + self.step_workspace)

    @property
    def total(self) -> int:
        """Every component added up, as if nothing were freed (for the table's breakdown)."""
        return self.params + self.gradients + self.optimizer + self.activations + self.buffers


class WorkerMemory(_Frozen):
    """One worker's memory for one ZeRO option and world size."""

    option: ZeroOption
    world_size: int
    precision: Precision
    on_gpu: bool
    device: Footprint  # all zeros on a CPU run
    host: Footprint
    load_host: int  # host RAM while from_pretrained runs: parameters + the checkpoint's pages
    init_device: int  # GPU memory while deepspeed.initialize runs (ZeRO-3 without zero.Init: whole model)

    @property
    def peak_device(self) -> int:
        return max(self.device.peak, self.init_device) if self.on_gpu else 0

    @property
    def peak_host(self) -> int:
        return max(self.host.peak, self.load_host)

    @property
    def model_states_device(self) -> int:
        """What DeepSpeed's estimators cover, on the GPU: parameters, gradients, optimizer states."""
        return self.device.params + self.device.gradients + self.device.optimizer


class DeepSpeedFigures(_Frozen):
    """DeepSpeed's own estimator figures for the same job (model states only, per GPU / per node)."""

    option: ZeroOption
    gpu_bytes: int
    cpu_bytes: int  # per node, with DeepSpeed's additional_buffer_factor 1.5


# --- reading the model's config ------------------------------------------------------------------


def load_model_config(train: TrainSection):
    """The transformers config of `train.model`: its config.json, or the built-in table offline."""
    from transformers import AutoConfig

    from .model import resolve_model_path

    name = train.model.name_or_path
    where = resolve_model_path(name)  # pkg:// and local paths; raises ModelNotFoundError
    local = Path(where)
    if local.is_dir():
        path = local if (local / "config.json").is_file() else local / "model"  # a zerotune checkpoint
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=False), str(path / "config.json")
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise ModelConfigError(_unreadable(name, err)) from None
    try:  # a hub id: the hub cache (or the hub, when online)
        return AutoConfig.from_pretrained(name, revision=train.model.revision, trust_remote_code=False), f"hub:{name}"
    except (OSError, ValueError) as err:
        if name in KNOWN_CONFIGS:
            known = dict(KNOWN_CONFIGS[name])
            return AutoConfig.for_model(known.pop("model_type"), **known), f"built-in config of {name}"
        raise ModelConfigError(_unreadable(name, err)) from None


def _unreadable(name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"train.model.name_or_path: cannot read the config.json of {name!r} ({first}). The plan needs only "
            "that file: give a local directory that holds it, or run once with network access so the Hugging "
            "Face cache has it (HF_HUB_OFFLINE=0).")


def model_shape(train: TrainSection) -> ModelShape:
    """Read `train.model`'s config and count its parameters (with LoRA as the spec asks)."""
    config, source = load_model_config(train)
    lora = train.lora
    key = (config.to_json_string(), train.model.task, len(train.model.labels or ()) or 2,
           lora.enabled, lora.r, lora.dropout, tuple(lora.target_modules or ()))
    return _shape(key, config, source, train)


def _shape(key: tuple, config, source: str, train: TrainSection) -> ModelShape:
    counts = _count_parameters(key, config, train)
    get = functools.partial(_attr, config)
    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return ModelShape(
        source=source,
        model_type=config.model_type,
        decoder=config.model_type in _GATED_DECODERS,
        hidden_size=hidden,
        num_layers=get("num_hidden_layers", "n_layer"),
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        intermediate_size=get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden) or 4 * hidden,
        vocab_size=config.vocab_size,
        attention_dropout=(get("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", default=0.0)
                           or 0.0) > 0,
        mlp_activation_tensors=4 if getattr(config, "hidden_act", None) in _COMPOSITE_GELU
        or getattr(config, "activation_function", None) in _COMPOSITE_GELU else 1,
        hidden_dropout=(get("hidden_dropout_prob", "resid_pdrop", "hidden_dropout", default=0.0) or 0.0) > 0,
        checkpoint_bytes=2 if any(t in dtype for t in ("16", "bfloat")) else 4,
        lora_r=train.lora.r if train.lora.enabled else 0,
        lora_dropout=train.lora.enabled and train.lora.dropout > 0,
        **counts,
    )


def _attr(config, *names: str, default: Any = None) -> Any:
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise ModelConfigError(f"train.model.name_or_path: the model's config has none of {', '.join(names)}; "
                           "the plan cannot size this architecture")


_COUNTS: dict[tuple, dict[str, int]] = {}  # per process: a plan counts each model once


def _count_parameters(key: tuple, config, train: TrainSection) -> dict[str, int]:
    """Build the model on the meta device (no memory, no weights) and count what trains."""
    if key in _COUNTS:
        return _COUNTS[key]
    import copy

    import torch
    import transformers

    from .model import prepare_for_training
    from .tasks import get_task

    task = get_task(train.model.task)
    labels = train.model.labels or ["a", "b"]  # the head's size is negligible; data may name the labels later
    config = copy.deepcopy(config)
    for k, v in task.head_kwargs(labels).items():
        if k != "ignore_mismatched_sizes":
            setattr(config, k, v)
    auto = getattr(transformers, task.auto_class)
    with torch.device("meta"):  # every tensor, LoRA's included, is shape only
        try:
            model = auto.from_config(config, trust_remote_code=False)
        except ValueError as err:
            raise ModelConfigError(f"train.model.task: {config.model_type!r} models have no {task.auto_class} "
                                   f"head in transformers ({str(err).splitlines()[0]})") from None
        # The loop's own preparation, so LoRA targets (peft's defaults per architecture) and the
        # trainable head are exactly what training will see.
        model = prepare_for_training(model, train.model, train.lora)
    params = list(model.parameters())  # tied weights appear once
    adapters = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    counts = {
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "largest_layer_params": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        "largest_trainable_tensor": max((p.numel() for p in params if p.requires_grad), default=0),
        "lora_adapters": len(adapters),
        "lora_input_features": sum(m.in_features for m in adapters),
    }
    _COUNTS[key] = counts
    return counts


# --- the estimate --------------------------------------------------------------------------------


def precision_of(train: TrainSection, on_gpu: bool) -> Precision:
    """The precision the loop would pick ('auto': fp32 on CPU, bf16 on a GPU; bf16 assumed supported)."""
    try:
        return resolve_precision(train.deepspeed.precision, on_gpu=on_gpu, bf16_supported=True)
    except ValueError as err:
        raise UserError(str(err)) from None


def activation_bytes(shape: ModelShape, train: TrainSection, precision: Precision, on_gpu: bool) -> int:
    """Bytes autograd keeps for backward at the end of one micro-batch's forward pass.

    Counted tensor by tensor for one block (what each op saves), times the layers; see
    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") for
    the 16-bit GPU case, which this reproduces (34sbh + 5as^2b per layer). Two things differ on CPU,
    both measured: dropout keeps a mask as wide as the activations (not 1 byte), and attention with
    dropout takes the math path that keeps the full softmax.
    """
    e = 4 if precision == "fp32" else 2
    h, inter, a = shape.hidden_size, shape.intermediate_size, shape.num_heads
    s, b = train.data.max_length, train.schedule.micro_batch_size
    mask = e if not on_gpu else 1
    m_att = mask if shape.attention_dropout else 0
    m_hid = mask if shape.hidden_dropout else 0
    full = not train.lora.enabled
    flash = on_gpu or not shape.attention_dropout
    if train.model.attn_implementation == "eager":
        flash = False
    # Attention: scores (softmax output, dropout mask and output) unless a fused kernel keeps only
    # its output and log-sum-exp.
    attention = a * s * (2 * e + m_att) if not flash else e * h + 4 * a
    if shape.decoder:  # RMSNorm (fp32 input kept), q/k/v (GQA), gated MLP
        kv = shape.num_kv_heads * (h // a)
        kept = 4 * h + e * (h + 2 * kv) + attention + 4 * h + 3 * e * inter
        trained = e * (2 * h + h + 2 * h) + e * inter  # norm outputs, q/k/v, o, MLP inputs, down input
    else:  # BERT/RoBERTa/GPT-2: LayerNorm, GELU MLP, dropout on both residual branches
        kept = 3 * e * h + attention + 2 * m_hid * h + 2 * e * h + shape.mlp_activation_tensors * e * inter
        trained = 3 * e * h + e * inter  # inputs of q/k/v, o and the two MLP linears
    per_token_layer = kept + (trained if full else 0)
    m_lora = mask if shape.lora_dropout else 0
    lora = shape.lora_input_features * (e + m_lora) + shape.lora_adapters * shape.lora_r * e  # whole model
    tokens = s * b
    if train.model.gradient_checkpointing:
        # Each block keeps its input; backward recomputes one block at a time.
        layers = tokens * (shape.num_layers * e * h + per_token_layer)
        lora = lora // max(shape.num_layers, 1)
    else:
        layers = tokens * shape.num_layers * per_token_layer
    embeddings = tokens * (2 * e + m_hid) * h if full and not shape.decoder else 0
    return layers + tokens * lora + embeddings + _head_bytes(shape, train, e, tokens)


def _head_bytes(shape: ModelShape, train: TrainSection, e: int, tokens: int) -> int:
    """The logits a generative model keeps at every position: model-dtype logits, the log-softmax of
    their fp32 copy, and its gradient. Classification heads' logits are negligible."""
    from .tasks import get_task

    if not get_task(train.model.task).generative:
        return 0
    return tokens * shape.vocab_size * (e + 8)


def estimate(train: TrainSection, shape: ModelShape, option: ZeroOption, *, world_size: int,
             on_gpu: bool) -> WorkerMemory:
    """One worker's memory for `option` with `world_size` workers."""
    precision = precision_of(train, on_gpu)
    ep = 4 if precision == "fp32" else 2
    P, T, N = shape.total_params, shape.trainable_params, world_size
    stage = option.stage
    shard = N if stage >= 1 else 1
    mixed = precision != "fp32"

    params = P * ep // N if stage == 3 else P * ep
    grads = T * ep // N if stage >= 2 else T * ep
    moments = 8 * T // shard
    master = 4 * T // shard if (mixed or stage >= 1) else 0  # ZeRO clones the fp32 partition even in fp32
    fp32_grads = 4 * T // shard if (stage >= 1 and (mixed or option.offload_optimizer)) else 0
    optimizer = moments + master + fp32_grads
    activations = activation_bytes(shape, train, precision, on_gpu)
    # ZeRO-3 gathers a module's parameters before it runs and keeps them while they will be reused
    # within stage3_max_reuse_distance, up to stage3_max_live_parameters (one worker gathers too).
    gathered = max(min(P, STAGE3_MAX_LIVE), shape.largest_layer_params) * ep if stage == 3 else 0

    on_device = Footprint(
        params=0 if option.offload_params else params,
        gradients=0 if option.offload_optimizer and stage >= 2 else grads,
        gradients_held=stage >= 2,
        optimizer=0 if option.offload_optimizer else optimizer,
        activations=activations,
    )
    offloaded_params = params if option.offload_params else 0
    offloaded_optimizer = optimizer if option.offload_optimizer else 0
    load = P * ep + P * shape.checkpoint_bytes  # parameters plus the checkpoint's pages while loading
    if not on_gpu:
        runtime = CPU_RUNTIME + (CPU_ZERO_RUNTIME if stage >= 1 else 0)
        # gloo stages an all-gather through a second buffer (measured); a fetch is at most a prefetch bucket.
        staging = min(P, STAGE3_PREFETCH) * ep if stage == 3 and N > 1 else 0
        host = on_device.model_copy(update={
            "params": on_device.params + offloaded_params,
            "optimizer": on_device.optimizer + offloaded_optimizer,
            "buffers": gathered + staging + runtime,
            "step_workspace": _cpu_step_workspace(shape, option, ep, N, mixed),
        })
        return WorkerMemory(option=option, world_size=N, precision=precision, on_gpu=False, device=Footprint(),
                            host=host, load_host=load, init_device=0)
    # On a GPU the caching allocator holds the whole reduce bucket from the start of backward, while
    # activations are still alive: ZeRO 1-2 allocate reduce_bucket_size elements per micro-step (ZeRO-2
    # twice: render_config turns overlap_comm on for GPUs); ZeRO-3 one bucket. FusedAdam and
    # DeepSpeedCPUAdam update in place; ZeRO-0 flattens gradients for the all-reduce after backward.
    bucket = REDUCE_BUCKET * ep * (2 if stage == 2 else 1) if stage >= 1 else 0
    flat = min(T, REDUCE_BUCKET) * ep if stage == 0 else 0
    device = on_device.model_copy(update={"buffers": bucket + gathered + CUDA_CONTEXT, "step_workspace": flat})
    host = Footprint(params=offloaded_params, optimizer=offloaded_optimizer, buffers=CUDA_HOST_RUNTIME)
    init = (P * ep if stage == 3 else 0) + CUDA_CONTEXT  # no zero.Init: the whole model lands first
    return WorkerMemory(option=option, world_size=N, precision=precision, on_gpu=True, device=device, host=host,
                        load_host=load + CUDA_HOST_RUNTIME, init_device=init)


def _cpu_step_workspace(shape: ModelShape, option: ZeroOption, ep: int, n: int, mixed: bool) -> int:
    """CPU memory the step needs after backward has freed the activations (measured shapes):
    ZeRO-0 flattens all gradients for the all-reduce, then torch's AdamW makes a temporary as large as
    each parameter; ZeRO 1-3 make an fp32 gradient partition (a copy in fp32) and AdamW's temporary
    over the flat partition. The reduce bucket's pages are written while activations are freed."""
    T = shape.trainable_params
    if option.stage == 0:
        return min(T, REDUCE_BUCKET) * ep + 4 * shape.largest_trainable_tensor
    partition = 4 * T // n
    if option.offload_optimizer:
        return 0  # DeepSpeedCPUAdam updates the (offloaded) partition in place
    flat = min(T, REDUCE_BUCKET) * ep if option.stage == 1 else 0
    return flat + partition * (1 if mixed else 2)


def estimate_all(train: TrainSection, shape: ModelShape, *, world_size: int, on_gpu: bool) -> list[WorkerMemory]:
    return [estimate(train, shape, o, world_size=world_size, on_gpu=on_gpu) for o in ZERO_OPTIONS]


def deepspeed_figures(shape: ModelShape, option: ZeroOption, *, world_size: int,
                      gpus_per_node: int = 1) -> DeepSpeedFigures | None:
    """DeepSpeed's estimator for the same model and layout (no zero.Init, as our loop), or None for
    ZeRO 0-1, which it has no estimator for. It counts every parameter as trainable."""
    nodes = max(1, world_size // gpus_per_node)
    if option.stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            shape.total_params, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
            cpu_offload=option.offload_optimizer)
    elif option.stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        if option.offload_params and not option.offload_optimizer:
            return None  # DeepSpeed's estimator has no figure for parameter offload alone
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.total_params, shape.largest_layer_params, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
            cpu_offload=option.offload_optimizer, cpu_offload_params=option.offload_params, zero_init=False)
    else:
        return None
    return DeepSpeedFigures(option=option, gpu_bytes=int(gpu), cpu_bytes=int(cpu))

"""Render the DeepSpeed config dict from the spec (pure; unit-tested).

Batch sizes, learning rate and schedule come from the spec and the step count the worker
computes, so the DeepSpeed JSON can never disagree with what we train. The optimizer and
schedule parameters are also what engine ddp builds its AdamW and DeepSpeed schedule class from
(trainers/ddp.py): one source for both engines.
"""

from __future__ import annotations

from typing import Any, Literal

from .config import TrainSection

Precision = Literal["fp32", "bf16", "fp16"]


def resolve_precision(requested: str, *, on_gpu: bool, bf16_supported: bool,
                      engine: str = "deepspeed") -> Precision:
    """'auto' is fp32 on CPU, bf16 on GPUs that have it, else fp16 (engine ddp: else fp32, as ddp
    has no loss scaler; the spec refuses fp16 with ddp when it loads)."""
    if requested != "auto":
        if requested != "fp32" and not on_gpu:
            # Half precision on CPU is slow and DeepSpeed's CPU path is fp32; say so rather than degrade.
            raise ValueError(f"train.deepspeed.precision={requested} needs a GPU; use 'auto' or 'fp32' on CPU")
        return requested  # type: ignore[return-value]
    if not on_gpu:
        return "fp32"
    return "bf16" if bf16_supported else ("fp32" if engine == "ddp" else "fp16")


def optimizer_params(train: TrainSection) -> dict[str, Any]:
    """AdamW's arguments (both engines)."""
    o = train.optim
    return {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}


def lr_schedule(train: TrainSection, total_steps: int) -> dict[str, Any]:
    """The learning-rate schedule as DeepSpeed's config names it: {"type": a class in
    deepspeed.runtime.lr_schedules, "params": its arguments}. Linear warmup from 0 over
    `warmup_ratio` of the steps (at least one), then linear, cosine or no decay."""
    s, lr = train.schedule, train.optim.lr
    warmup = max(1, round(s.warmup_ratio * total_steps))
    if s.decay == "linear":
        return {"type": "WarmupDecayLR",
                "params": {"total_num_steps": max(total_steps, warmup), "warmup_min_lr": 0.0, "warmup_max_lr": lr,
                           "warmup_num_steps": warmup, "warmup_type": "linear"}}
    if s.decay == "cosine":
        return {"type": "WarmupCosineLR",
                "params": {"total_num_steps": max(total_steps, warmup), "warmup_min_ratio": 0.0,
                           "warmup_num_steps": warmup, "cos_min_ratio": 0.0, "warmup_type": "linear"}}
    return {"type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup,
                       "warmup_type": "linear"}}


def render_config(
    train: TrainSection, *, world_size: int, total_steps: int, precision: Precision, on_gpu: bool
) -> dict[str, Any]:
    s, o, ds = train.schedule, train.optim, train.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=on_gpu, contiguous_gradients=True, reduce_scatter=True)
    if ds.zero_stage == 3:
        # The servable copy is gathered on rank 0 at save time.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}

    optimizer = optimizer_params(train)
    if not on_gpu and not ds.offload_optimizer:
        # torch.optim.AdamW on CPU: DeepSpeed's FusedAdam is a CUDA kernel.
        optimizer["torch_adam"] = True

    config: dict[str, Any] = {
        "train_batch_size": s.micro_batch_size * s.gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": optimizer},
        "scheduler": lr_schedule(train, total_steps),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # we print our own progress lines
        "wall_clock_breakdown": False,
    }
    if o.grad_clip is not None:
        config["gradient_clipping"] = o.grad_clip
    return config

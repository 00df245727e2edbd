"""`DDPEngine`: the engine of `train.engine: ddp`, plain data parallelism without DeepSpeed.

Every worker holds the whole model and its AdamW state (ZeRO-0's memory). With more than one worker
torch's DistributedDataParallel all-reduces the gradients, over the process group Ray Train set up
(gloo on CPU, NCCL on GPU), once per optimizer step. On CPU DeepSpeed's engine costs about 30% per
step over this loop (fp64 gradient norm, flat-buffer copies; bench/results/train_throughput.md).

It offers exactly what trainers/loop.py uses of a DeepSpeedEngine, with DeepSpeed's semantics:
`backward` scales the loss by 1/gradient_accumulation_steps, `step` is called after every
micro-batch and acts only at the end of an accumulation window (clip, AdamW step, zero the
gradients, schedule step), and the learning-rate schedule is DeepSpeed's own class built from the
parameters trainers/deepspeed.py renders, so both engines follow one schedule.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from .config import TrainSection
from .deepspeed import lr_schedule, optimizer_params
from .errors import CheckpointError
from .safe_load import safe_torch_load

STATE_FILE = "ddp_state.pt"  # under <state dir>/<tag>/, as DeepSpeed keeps its files


class DDPEngine:
    """One worker's model, AdamW and schedule; `distributed` wraps the model in DDP (world > 1)."""

    def __init__(self, model: torch.nn.Module, train: TrainSection, *, total_steps: int, device: torch.device,
                 distributed: bool, autocast_dtype: torch.dtype | None = None):
        import torch.distributed as dist
        from deepspeed.runtime import lr_schedules  # the module only: no deepspeed.initialize

        self.module = model.to(device)
        self.device = device
        self.gradient_accumulation_steps = train.schedule.gradient_accumulation_steps
        self.grad_clip = train.optim.grad_clip
        self.autocast_dtype = autocast_dtype
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fused: one CUDA kernel for all parameters (as DeepSpeed's FusedAdam); CPU keeps torch's default.
        self.optimizer = torch.optim.AdamW(self.params, **optimizer_params(train),
                                           **({"fused": True} if device.type == "cuda" else {}))
        schedule = lr_schedule(train, total_steps)
        self.lr_scheduler = getattr(lr_schedules, schedule["type"])(self.optimizer, **schedule["params"])
        # Rank 0's weights and buffers are broadcast once, here; not again before every forward: a
        # transformer's buffers (position ids) never change, and that would be one more collective per micro-batch.
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
        ) if distributed else None
        self.global_steps = 0
        self.micro_steps = 0

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.gradient_accumulation_steps == 0

    def __call__(self, **batch: torch.Tensor) -> Any:
        if self.ddp is not None and torch.is_grad_enabled() and self.module.training:
            # DDP all-reduces in the backward of a forward made with require_backward_grad_sync (what its
            # no_sync() unsets): only the micro-batch that ends an accumulation window syncs.
            self.ddp.require_backward_grad_sync = self.is_gradient_accumulation_boundary()
            forward = self.ddp
        else:
            forward = self.module  # evaluation and probes: no collective, so ranks may run unequal batches
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            return forward(**batch)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        scaled = loss / self.gradient_accumulation_steps  # the window's gradient is the mean, as DeepSpeed's
        scaled.backward()
        return scaled

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_scheduler.step()
            self.global_steps += 1
        self.micro_steps += 1

    def get_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def train(self, mode: bool = True) -> DDPEngine:
        self.module.train(mode)
        return self

    def eval(self) -> DDPEngine:
        return self.train(False)

    # --- checkpoint state -------------------------------------------------------------------------

    def _frozen(self) -> set[str]:
        return {n for n, p in self.module.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def save_checkpoint(self, save_dir: str | Path, tag: str) -> None:
        """Rank 0 writes what resume needs (the replicas are identical): trainable weights and buffers
        (frozen weights come back from the base model), AdamW and schedule state, the step count."""
        if self.rank != 0:
            return
        frozen = self._frozen()
        path = Path(save_dir, tag)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"module": {k: v for k, v in self.module.state_dict().items() if k not in frozen},
                    "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                    "global_steps": self.global_steps}, path / STATE_FILE)

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> tuple[str, dict]:
        """Every rank reads rank 0's state with weights_only=True (a checkpoint never runs code);
        returns (path, {}) as DeepSpeed's load_checkpoint does."""
        path = Path(load_dir, tag, STATE_FILE)
        if not path.is_file():
            there = sorted(p.name for p in Path(load_dir, tag).glob("*"))[:8]
            raise CheckpointError(f"{path.parent} holds no {STATE_FILE} (it has: {', '.join(there) or 'nothing'}): "
                                  "this checkpoint was not written by engine ddp.")
        state = safe_torch_load(path, map_location="cpu", allow=())
        missing, unexpected = self.module.load_state_dict(state["module"], strict=False)
        if unexpected or set(missing) - self._frozen():
            raise CheckpointError(f"{path} does not fit this model: missing {sorted(set(missing) - self._frozen())[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}; was it trained from another model or LoRA setup?")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.global_steps = int(state["global_steps"])
        self.micro_steps = self.global_steps * self.gradient_accumulation_steps  # saved at a window's end
        return str(path.parent), {}

"""`RoundReport`: what every rank reports after an evaluation round, typed in both directions.

Workers send it flat through `ray.train.report` (Ray Tune's schedulers read the metric as a
top-level key); the driver, Tune callbacks and the sweep's report read it back with `from_ray`,
which ignores the bookkeeping keys Ray and Tune add.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVAL_PREFIX = "eval_"


class RoundReport(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    step: int = Field(description="Optimizer steps done.")
    total_steps: int = Field(description="Optimizer steps the schedule runs in all.")
    epoch: int
    lr: float
    train_loss: float = Field(description="Mean training loss since the previous round, all ranks.")
    trainable_params: int
    total_params: int
    peak_memory_mb: float = Field(default=0.0, description="Peak RSS (CPU) or allocated CUDA memory, this rank.")
    optimizer_state_mb: float = Field(default=0.0, description="Adam moments held by this rank (ZeRO shards them).")
    samples_per_s: float = Field(default=0.0, description="Training throughput since the previous round, all ranks.")
    tokens_per_s: float = 0.0
    resumed_from_step: int = Field(default=-1, description="Step this attempt resumed from; -1: a fresh start.")
    # A trial's fixed cost on this rank (trainers/loop.py): the driver up to launching Train, the Train
    # controller and worker group start, then worker start, imports, model, data, the engine.
    setup_driver_s: float = Field(default=0.0, description="The driver's (a trial's) process start to Train's launch.")
    setup_launch_s: float = Field(default=0.0, description="Train's launch to this worker's process start.")
    setup_worker_s: float = Field(default=0.0, description="Worker process start to the training loop.")
    setup_imports_s: float = 0.0
    setup_model_s: float = Field(default=0.0, description="Tokenizer and model loaded, LoRA applied.")
    setup_data_s: float = Field(default=0.0, description="This rank's shard read from the prepared data.")
    setup_deepspeed_s: float = Field(default=0.0, description="The engine's setup (DeepSpeed's or DDP's).")
    diverged: bool = Field(default=False, description="The loss stopped being finite; the run stopped here.")
    eval: dict[str, float] = Field(default_factory=dict, description="Validation metrics, eval_<name>.")

    def to_ray(self) -> dict[str, float]:
        """Flat numbers, eval_* at the top level, for ray.train.report."""
        flat: dict[str, float] = self.model_dump(exclude={"eval"})
        flat["diverged"] = int(self.diverged)
        return {**flat, **self.eval}

    @classmethod
    def from_ray(cls, flat: Mapping[str, Any]) -> RoundReport:
        flat = {k: v.item() if hasattr(v, "item") else v for k, v in flat.items()}  # numpy scalars from Tune
        evals = {k: float(v) for k, v in flat.items() if k.startswith(EVAL_PREFIX) and _is_number(v)}
        return cls.model_validate({**flat, "eval": evals})

    def value(self, metric: str) -> float | None:
        """A metric by name (an eval_* metric or a field such as train_loss); None when absent or not finite."""
        v = self.eval.get(metric) if metric.startswith(EVAL_PREFIX) else getattr(self, metric, None)
        return float(v) if _is_number(v) and math.isfinite(float(v)) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)

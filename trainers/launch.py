"""`fit()`: the one training path. `zerotune train` and every Tune trial call it.

The driver checks everything it can before a worker starts (model path, data, labels, storage),
then builds a Ray Train v2 TorchTrainer around the per-worker loop.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import DIVERGED, read_manifest
from .config import TrainSection
from .data import Splits, load_splits
from .encode import encode_rows
from .errors import UserError
from .loop import WorkerConfig, train_loop
from .model import load_tokenizer, resolve_model_path


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; retrying from a checkpoint would diverge again."""


class StorageError(UserError):
    """The storage path cannot be written."""


@dataclass(frozen=True)
class FitResult:
    run_dir: str
    metrics: dict[str, Any]
    best_checkpoint: str | None
    latest_checkpoint: str | None
    best_metrics: dict[str, Any] = field(default_factory=dict)


def prepare(train: TrainSection) -> tuple[TrainSection, Splits]:
    """Check model, data and labels on the driver; return the spec with its labels resolved."""
    base_path = resolve_model_path(train.model.name_or_path)
    labels = train.model.labels
    if train.model.init_from:
        manifest = read_manifest(train.model.init_from)
        if manifest.task != train.model.task:
            raise UserError(f"train.model.init_from is a {manifest.task} checkpoint; this run is {train.model.task}")
        labels = labels or manifest.labels
    splits = load_splits(train.data, train.model.task, labels)
    tokenizer = load_tokenizer(base_path, trust_remote_code=train.model.trust_remote_code,
                               revision=train.model.revision)
    # Encode a few rows here so tokenizer problems (no chat template, ...) surface before workers start.
    encode_rows(splits.train[:8], tokenizer, train.data, train.model.task, splits.labels)
    resolved = train.model_copy(update={"model": train.model.model_copy(update={"labels": splits.labels})})
    return TrainSection.model_validate(resolved.model_dump()), splits


def resolve_storage(storage_path: str) -> str:
    """Absolute local path (checked writable) or a cloud URI, as Ray Train wants it."""
    if "://" in storage_path:
        return storage_path
    path = Path(storage_path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".zerotune-write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"cannot write to storage path {storage_path!r} ({err}); set cluster.storage_path "
                           "to a writable directory or an s3:// / gs:// URI") from None
    return str(path)


def fit(train: TrainSection, *, storage_path: str, name: str, callbacks: Sequence[Any] = (),
        verbose: bool = True) -> FitResult:
    """Train on the connected Ray cluster. Rerunning with the same name resumes the run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = resolve_storage(storage_path)
    _refuse_diverged_run(storage, name)
    train, splits = prepare(train)
    s = train.scaling
    if verbose:
        print(f"[zerotune] {name}: {train.model.task} on {len(splits.train)} train / {len(splits.validation)} "
              f"validation rows; {s.num_workers} worker(s), ZeRO-{train.deepspeed.zero_stage}, "
              f"global batch {train.global_batch_size}" + (f", labels {splits.labels}" if splits.labels else ""),
              flush=True)
    tensorboard = os.path.join(storage, name, "tensorboard") if "://" not in storage else None
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=WorkerConfig(train=train, tensorboard_dir=tensorboard).model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=s.keep_checkpoints,
                                               checkpoint_score_attribute=train.resolved_metric,
                                               checkpoint_score_order=train.resolved_mode),
            failure_config=FailureConfig(max_failures=s.max_failures),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if metrics.get("diverged"):
        raise TrainingDivergedError(
            f"training diverged: the loss was {metrics.get('train_loss')} at step {metrics.get('step')}. "
            f"Lower train.optim.lr (now {train.optim.lr:g}), add warmup (train.schedule.warmup_ratio) "
            "or gradient clipping (train.optim.grad_clip)."
        )
    best = _best_checkpoint(result, train)
    return FitResult(
        run_dir=str(result.path),
        metrics=metrics,
        best_checkpoint=best[0],
        best_metrics=best[1],
        latest_checkpoint=result.checkpoint.path if result.checkpoint else None,
    )


def _refuse_diverged_run(storage: str, name: str) -> None:
    """A rerun would resume from the marker of a diverged run; say so instead."""
    if "://" in storage:
        return
    run = Path(storage) / name
    marks = sorted(run.glob(f"checkpoint_*/{DIVERGED}"))
    if marks:
        raise TrainingDivergedError(
            f"run {name!r} diverged earlier ({marks[-1].parent.name}); resuming it would diverge again. "
            f"Fix the cause, then remove {run} or pick another run name."
        )


def _best_checkpoint(result, train: TrainSection) -> tuple[str | None, dict[str, Any]]:
    pairs = [(c, m) for c, m in (result.best_checkpoints or []) if train.resolved_metric in m and not m.get("diverged")]
    if not pairs:
        return None, {}
    sign = 1 if train.resolved_mode == "max" else -1
    ckpt, metrics = max(pairs, key=lambda cm: sign * cm[1][train.resolved_metric])
    return ckpt.path, dict(metrics)

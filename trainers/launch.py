"""`fit()`: the one training path. `zerotune train` and every Tune trial call it.

The driver checks everything it can before a worker starts (model path, data, labels, storage),
then builds a Ray Train v2 TorchTrainer around the per-worker loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .checkpoint import DIVERGED, STATE_DIR, TRAINER_STATE
from .config import TrainSection
from .console import say
from .errors import UserError, diverged_message
from .loop import TrainerState, WorkerConfig, other_engine_message, train_loop
from .prepared import PreparedData, prepare_data
from .rounds import RoundReport
from .storage import Location, StorageError


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; retrying from a checkpoint would diverge again."""


@dataclass(frozen=True)
class FitResult:
    run_dir: str
    final: RoundReport | None  # the last round reported
    best_checkpoint: str | None
    latest_checkpoint: str | None
    best: RoundReport | None = None  # the round of best_checkpoint


def resolve_storage(storage_path: str | Location) -> Location:
    """The storage root as a Location, checked writable now (a wrong path, bucket, endpoint or
    credential fails here, before any worker starts)."""
    root = Location.parse(storage_path)
    if root.is_local:
        try:
            root.local().mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot write to storage path {str(storage_path)!r} ({err}); set "
                               "cluster.storage_path to a writable directory or an s3:// / gs:// URI") from None
    root.check_writable("cluster.storage_path")
    return root


def fit(train: TrainSection, *, storage_path: str, name: str, callbacks: Sequence[Any] = (),
        verbose: bool = True, data_root: str | Location | None = None) -> FitResult:
    """Train on the connected Ray cluster. Rerunning with the same name resumes the run.

    The data is prepared once (trainers/prepared.py) under `data_root` (default
    `<storage_path>/prepared`; a sweep passes its own) and reused by every run with the same data."""
    import psutil
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage, train, data = prepare_run(train, storage_path=storage_path, name=name, data_root=data_root,
                                       verbose=verbose)
    s = train.scaling
    tensorboard = str(storage.join(name, "tensorboard"))
    storage_path, storage_fs = storage.for_ray()
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=WorkerConfig(train=train, tensorboard_dir=tensorboard, data=str(data.location),
                                       driver_started_at=psutil.Process().create_time(),
                                       launched_at=time.time()).model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=s.keep_checkpoints,
                                               checkpoint_score_attribute=train.resolved_metric,
                                               checkpoint_score_order=train.resolved_mode),
            failure_config=FailureConfig(max_failures=s.max_failures),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    final = RoundReport.from_ray(result.metrics) if result.metrics else None
    if final is not None and final.diverged:
        raise TrainingDivergedError(diverged_message(final.train_loss, final.step, train.optim.lr))
    best_path, best = _best_checkpoint(result, train)
    # Ray reports paths on the storage filesystem (bucket/prefix/..., no scheme): make them URIs again.
    return FitResult(
        run_dir=str(storage.at(result.path)),
        final=final,
        best_checkpoint=str(storage.at(best_path)) if best_path else None,
        best=best,
        latest_checkpoint=str(storage.at(result.checkpoint.path)) if result.checkpoint else None,
    )


def prepare_run(train: TrainSection, *, storage_path: str | Location, name: str,
                data_root: str | Location | None, verbose: bool) -> tuple[Location, TrainSection, PreparedData]:
    """What the driver checks and prepares before any training starts: storage writable, a rerun that
    can resume, the data prepared (or found) under `data_root` (default `<storage_path>/prepared`)."""
    storage = resolve_storage(storage_path)
    _refuse_diverged_run(storage.join(name), name)
    _refuse_other_engine(storage.join(name), train.engine)
    train, data = prepare_data(train, data_root if data_root is not None else storage.join("prepared"))
    s, rows, labels = train.scaling, data.manifest.rows, data.manifest.labels
    if verbose:
        say(f"{name}: {train.model.task} on {rows['train']} train / {rows['validation']} "
            f"validation rows; {s.num_workers} worker(s), {train.engine_label}, "
            f"global batch {train.global_batch_size}" + (f", labels {labels}" if labels else ""))
    if verbose or not data.reused:  # a trial that had to prepare its own data (model.* or data.* searched) says so
        say(f"{name}: data {'reused' if data.reused else 'prepared'} at {data.location}"
            + ("" if data.reused else f" ({data.manifest.seconds:.1f}s)"))
    return storage, train, data


def _refuse_diverged_run(run: Location, name: str) -> None:
    """A rerun would resume from the marker of a diverged run; say so instead."""
    marks = [c for c in run.list() if c.startswith("checkpoint_") and run.join(c, DIVERGED).is_file()]
    if marks:
        raise TrainingDivergedError(
            f"run {name!r} diverged earlier ({marks[-1]}); resuming it would diverge again. "
            f"Fix the cause, then remove {run} or pick another run name."
        )


def _refuse_other_engine(run: Location, engine: str) -> None:
    """A rerun resumes from the run's latest checkpoint, whose state only the engine that wrote it
    reads: say so here rather than in every worker, where each retry would fail the same way."""
    latest = max((c for c in run.list() if c.startswith("checkpoint_")), default=None)
    text = run.join(latest, STATE_DIR, TRAINER_STATE).read_text_or_none() if latest else None
    saved = TrainerState.model_validate_json(text).engine if text else engine
    if saved != engine:
        raise UserError(f"run {run}: {other_engine_message(saved, engine)}")


def _best_checkpoint(result, train: TrainSection) -> tuple[str | None, RoundReport | None]:
    metric = train.resolved_metric
    rounds = [(c.path, RoundReport.from_ray(m)) for c, m in (result.best_checkpoints or [])]
    scored = [(path, r) for path, r in rounds if not r.diverged and r.value(metric) is not None]
    if not scored:
        return None, None
    sign = 1 if train.resolved_mode == "max" else -1
    return max(scored, key=lambda pr: sign * pr[1].value(metric))

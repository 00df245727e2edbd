"""A one-worker run in the calling process: the training loop without Ray Train's controller and
worker group.

Why: a one-worker Tune trial that goes through Ray Train starts three fresh Ray processes (the
trial, Train's controller, the worker), each importing torch and Ray Train: about 13 s of its fixed
cost on a 2-core machine (bench/tune_efficiency.py), which early stopping cannot save. Run in the
trial's own process, the loop is the same (trainers/loop.py), and so is what it leaves behind: the
same checkpoints under <storage>/<name>/checkpoint_*, kept the way Ray Train keeps them (the best
`scaling.keep_checkpoints` by the spec's metric, and the latest), so resume, the sweep's records,
the report and serving read them alike. Several workers still go through Ray Train (launch.fit).

Retries: the caller's (Tune's FailureConfig for a trial); a rerun resumes from the latest checkpoint
in the index, which is written only after a checkpoint's upload completed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import TrainSection
from .errors import diverged_message
from .launch import FitResult, TrainingDivergedError, prepare_run
from .loop import WorkerConfig, train_loop
from .rounds import RoundReport
from .session import installed
from .storage import Location

INDEX_FILE = "checkpoints.json"
CHECKPOINT_PATH = "checkpoint_path"  # the key Ray Train's TuneReportCallback gives a round's checkpoint


class KeptCheckpoint(BaseModel):
    name: str  # checkpoint_<step>[_diverged], under the run's directory
    metrics: dict[str, Any]  # the round's report (RoundReport.to_ray())


class CheckpointIndex(BaseModel):
    checkpoints: list[KeptCheckpoint] = []  # in the order written; the last is the latest


class RunCheckpoints:
    """A run's checkpoints and their index (<run>/checkpoints.json)."""

    def __init__(self, run: Location, *, keep: int, metric: str, mode: str):
        self.run, self.keep, self.metric, self.sign = run, keep, metric, 1.0 if mode == "max" else -1.0
        text = run.join(INDEX_FILE).read_text_or_none()
        self.index = CheckpointIndex.model_validate_json(text) if text else CheckpointIndex()

    def latest(self) -> Location | None:
        return self.run.join(self.index.checkpoints[-1].name) if self.index.checkpoints else None

    def best(self) -> KeptCheckpoint | None:
        scored = [c for c in self.index.checkpoints if self._score(c) is not None and not c.metrics.get("diverged")]
        return max(scored, key=self._score) if scored else None

    def add(self, local_dir: Path, name: str, metrics: dict[str, Any]) -> Location:
        """Upload the checkpoint, then record it; then drop the ones no longer kept."""
        dest = self.run.join(name)
        dest.remove_tree()  # a half-written copy from a process killed mid-upload
        dest.upload(local_dir)
        kept = [c for c in self.index.checkpoints if c.name != name] + [KeptCheckpoint(name=name, metrics=metrics)]
        # Ray Train's rule: the best `keep` by the metric (unscored ones last), and always the latest.
        ranked = sorted(kept, key=lambda c: -math.inf if self._score(c) is None else self._score(c), reverse=True)
        keep = {c.name for c in ranked[:self.keep]} | {name}
        self.index = CheckpointIndex(checkpoints=[c for c in kept if c.name in keep])
        self.run.join(INDEX_FILE).write_text(self.index.model_dump_json(indent=1))
        for c in kept:
            if c.name not in keep:
                self.run.join(c.name).remove_tree()
        return dest

    def _score(self, c: KeptCheckpoint) -> float | None:
        try:
            value = float(c.metrics[self.metric])
        except (KeyError, TypeError, ValueError):
            return None
        return self.sign * value if math.isfinite(value) else None


class InProcessSession:
    """trainers/session.Session for the loop run here: rank 0 of 1."""

    rank, world = 0, 1

    def __init__(self, run_name: str, checkpoints: RunCheckpoints, on_report: Callable[[dict[str, Any]], None],
                 use_gpu: bool):
        self.run_name, self.checkpoints, self.on_report, self.use_gpu = run_name, checkpoints, on_report, use_gpu
        self.last: dict[str, Any] | None = None

    def device(self) -> Any:
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it gave this process: the first visible one.
        return torch.device("cuda", 0) if self.use_gpu else torch.device("cpu")

    def latest_checkpoint(self) -> Any:
        import ray.train

        latest = self.checkpoints.latest()
        if latest is None:
            return None
        path, fs = latest.for_ray()
        return ray.train.Checkpoint(path, filesystem=fs)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, dir_name: str) -> None:
        row = dict(metrics)
        if checkpoint_dir is not None:
            # On the storage filesystem, no scheme: what Ray Train reports for its checkpoints.
            row[CHECKPOINT_PATH] = self.checkpoints.add(checkpoint_dir, dir_name, metrics).path
        self.last = metrics
        self.on_report(row)

    def report_latest_again(self) -> None:
        """A rerun of a run that had already trained to its end (its process was killed after the last
        checkpoint, before the caller saw it end) trains nothing: its last round is still its result."""
        kept = self.checkpoints.index.checkpoints
        if kept:
            self.last = kept[-1].metrics
            self.on_report({**kept[-1].metrics, CHECKPOINT_PATH: self.checkpoints.latest().path})


def fit_in_process(train: TrainSection, *, storage_path: str, name: str, on_report: Callable[[dict[str, Any]], None],
                   data_root: str | Location | None = None, verbose: bool = False) -> FitResult:
    """launch.fit's run for `scaling.num_workers: 1`, in this process; every round's metrics (with
    `checkpoint_path`) go to `on_report`. Rerunning with the same name resumes the run."""
    import psutil

    if train.scaling.num_workers != 1:
        raise ValueError(f"fit_in_process runs one worker; the spec asks for {train.scaling.num_workers}")
    started = psutil.Process().create_time()
    storage, train, data = prepare_run(train, storage_path=storage_path, name=name, data_root=data_root,
                                       verbose=verbose)
    run = storage.join(name)
    checkpoints = RunCheckpoints(run, keep=train.scaling.keep_checkpoints, metric=train.resolved_metric,
                                 mode=train.resolved_mode)
    launched = time.time()
    if train.engine == "deepspeed":
        _one_rank_process_group(train.scaling.use_gpu)
    session = InProcessSession(name, checkpoints, on_report, use_gpu=train.scaling.use_gpu)
    config = WorkerConfig(train=train, tensorboard_dir=str(run.join("tensorboard")), data=str(data.location),
                          driver_started_at=started, launched_at=launched)
    with installed(session):
        train_loop(config.model_dump(mode="json"), worker_started=time.time())
    if session.last is None:
        session.report_latest_again()
    final = RoundReport.from_ray(session.last) if session.last else None
    if final is not None and final.diverged:
        raise TrainingDivergedError(diverged_message(final.train_loss, final.step, train.optim.lr))
    best, latest = checkpoints.best(), checkpoints.latest()
    return FitResult(run_dir=str(run), final=final,
                     best_checkpoint=str(run.join(best.name)) if best else None,
                     best=RoundReport.from_ray(best.metrics) if best else None,
                     latest_checkpoint=str(latest) if latest else None)


def _one_rank_process_group(use_gpu: bool) -> None:
    """DeepSpeed needs torch.distributed and the launcher's variables even for one rank (Ray Train's
    worker group sets both up; here a world of one over an in-memory store, no port to find). Once
    per process: the trial's process runs one trial."""
    import torch.distributed as dist

    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(var, value)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)

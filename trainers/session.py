"""The training loop's link to whoever runs it: rank and world, the checkpoint to resume from, and
where each round's metrics and checkpoint go.

Two runners, one loop (trainers/loop.py):
- a Ray Train worker (`zerotune train`, and trials with several workers): Ray Train's own API;
- the Tune trial's own process (trials with one worker, trainers/in_process.py): there Ray's
  `ray.train.report` refuses to run (it is a Tune session), so the trial installs an
  `InProcessSession` that keeps checkpoints in the same layout and reports to Tune.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol


class Session(Protocol):
    rank: int
    world: int
    run_name: str

    def device(self) -> Any:
        """The torch device this rank trains on."""

    def latest_checkpoint(self) -> Any:
        """A ray.train.Checkpoint to resume from (`as_directory()`), or None."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, dir_name: str) -> None:
        """One round's flat metrics and, on rank 0 at least, the directory to keep as its checkpoint."""


class RayTrainSession:
    """Inside a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world, self.run_name = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_experiment_name()

    def device(self) -> Any:
        import ray.train.torch

        return ray.train.torch.get_device()

    def latest_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, dir_name: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir))
                         if checkpoint_dir is not None else None, checkpoint_dir_name=dir_name)


_installed: Session | None = None


@contextmanager
def installed(session: Session) -> Iterator[Session]:
    """Run the loop under `session` instead of Ray Train's (one loop at a time per process)."""
    global _installed
    if _installed is not None:
        raise RuntimeError("a training session is already running in this process")
    _installed = session
    try:
        yield session
    finally:
        _installed = None


def current() -> Session:
    return _installed if _installed is not None else RayTrainSession()

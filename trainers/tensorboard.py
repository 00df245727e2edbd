"""TensorBoard event files for a run, wherever its storage is: written locally by rank 0 and, for
cloud storage, uploaded under the run's URI after every flush, so `tensorboard --logdir s3://...`
and any other machine read the same files."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .storage import Location


class TensorBoard:
    def __init__(self, target: str) -> None:
        from tensorboardX import SummaryWriter

        self.target = Location.parse(target)
        self.local = self.target.local() if self.target.is_local else Path(tempfile.mkdtemp(prefix="zerotune-tb-"))
        self.local.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.local))

    def scalar(self, name: str, value: float, step: int) -> None:
        self._writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self._writer.flush()
        if not self.target.is_local:
            self.target.upload(self.local)

    def close(self) -> None:
        self.flush()
        self._writer.close()

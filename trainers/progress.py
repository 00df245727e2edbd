"""The live view of one training run (`zerotune train`): a progress bar with the step, loss,
learning rate, samples/s and ETA, fed by rank 0's step events (trainers.console.progress, every
`schedule.log_every_steps` steps). Evaluation rounds and every other zerotune line print above it.

On a terminal the bar is drawn with rich and updates in place; anywhere else (a pipe, a CI log,
`ray job logs`) each step event is one plain line, as rank 0 would have printed it.
"""

from __future__ import annotations

import threading
from typing import Any, TextIO

from . import console


class TrainProgress:
    def __init__(self, stream: TextIO, *, live: bool | None = None):
        self._stream = stream
        self._live = stream.isatty() if live is None else live
        self._lock = threading.RLock()
        self._progress = None  # rich.progress.Progress while the bar is on screen
        self._task = None
        self._done = False

    # --- View -------------------------------------------------------------------------------------

    def print(self, text: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self._stream.write(text + "\n")
                self._stream.flush()

    def on_progress(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "eval":
            self.print(f"{console.PREFIX} {console.describe(event)}")
            return
        if kind != "step":
            return
        if not self._live:
            self.print(f"{console.PREFIX} {console.describe(event)}")
            return
        with self._lock:
            if self._done:
                return
            self._update(event)

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self._done = True

    # --- the bar ------------------------------------------------------------------------------------

    def _update(self, event: dict[str, Any]) -> None:
        step, total = int(event.get("step", 0)), int(event.get("total_steps") or 0)
        fields = {"loss": float(event.get("loss", float("nan"))), "lr": float(event.get("lr", 0.0)),
                  "sps": float(event.get("samples_per_s", 0.0)), "epoch": int(event.get("epoch", 0))}
        if self._progress is None:
            self._start(total, fields)
        self._progress.update(self._task, completed=step, total=total or None, **fields)
        if total and step >= total:
            self._progress.refresh()
            self.close()  # the finished bar stays on screen; the summary prints below it

    def _start(self, total: int, fields: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                       "{task.fields[sps]:.1f} samples/s"),
            TextColumn("eta"), TimeRemainingColumn(),
            console=Console(file=self._stream, force_terminal=True), redirect_stdout=False, redirect_stderr=False,
            refresh_per_second=4, transient=False,
        )
        self._task = self._progress.add_task("train", total=total or None, **fields)
        self._progress.start()

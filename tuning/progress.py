"""Progress lines while a sweep runs, and how each trial ended, noted on its last result.

Ray Tune records a trial stopped by ASHA, one that finished and one cut off by the time budget
all as TERMINATED, so this callback notes which it was on the trial's last result, which Tune
stores with the experiment: a restored sweep's report still tells them apart.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

from .records import ENDED


def _say(message: str) -> None:
    sys.stdout.write(f"[zerotune] {message}\n")
    sys.stdout.flush()


def _short(trial_id: str) -> str:
    return trial_id.rsplit("_", 1)[-1]


class SweepProgress(Callback):
    def __init__(self, metric: str, mode: str, every_s: float = 30.0):
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self._last_summary = 0.0
        self._best: tuple[float, str] | None = None

    def _better(self, value: float) -> bool:
        if self._best is None:
            return True
        return value > self._best[0] if self.mode == "max" else value < self._best[0]

    def on_trial_start(self, iteration, trials, trial, **info):
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        _say(f"trial {_short(trial.trial_id)} started ({values or 'base spec'})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and self._better(value):
            self._best = (float(value), trial.trial_id)
        stopped = bool(result.get("done"))  # only a scheduler STOP sets done before the trial ends
        if stopped:
            result[ENDED] = "stopped"  # callbacks may amend the result; Tune stores it after them
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        _say(f"trial {_short(trial.trial_id)} round {result.get('training_iteration')} (step {result.get('step')}): "
             f"{self.metric} {shown}" + (" -> stopped by the scheduler" if stopped else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result
        if trial.has_reported_at_least_once and ENDED not in last:
            # The trial function returned (Tune then marks its last result done) or the sweep
            # cut it off (time budget). update_last_result makes Tune save the note.
            trial.update_last_result({**last, ENDED: "completed" if last.get("done") else "interrupted"})
        _say(f"trial {_short(trial.trial_id)} {trial.last_result.get(ENDED, 'ended')}")

    def on_trial_error(self, iteration, trials, trial, **info):
        _say(f"trial {_short(trial.trial_id)} failed: {_last_line(trial.error_file)}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last_summary < self.every_s:
            return
        self._last_summary = now
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        best = f"; best {self.metric} {self._best[0]:.4f} (trial {_short(self._best[1])})" if self._best else ""
        _say(f"sweep: {len(trials)} trials: {states}{best}")


def _last_line(path: str | None) -> str:
    try:
        lines = [x for x in Path(path).read_text().splitlines() if x.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1].strip() if lines else "see the trial's error.txt"

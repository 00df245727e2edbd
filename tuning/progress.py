"""The sweep's live view, and how each trial ended, noted on its last result.

One view for the whole sweep, fed from two sides: this Tune callback (trials starting, their
evaluation rounds, how they ended) and the trials' rank-0 step events that reach the driver
through the console feed (trainers.console.progress: step, samples/s). On a terminal it is a
compact table that rich redraws in place: trials running / done / stopped early / failed, the
best so far, each running trial's step and samples/s, and the sweep's ETA. Anywhere else it
prints the notable events (a trial started, ended, failed, a new best) and a status line every
`every_s` seconds. With `-v` (the libraries' own output on the terminal) it prints plain lines.

Ray Tune records a trial stopped by ASHA, one that finished and one cut off by the time budget
all as TERMINATED, so this callback notes which it was on the trial's last result, which Tune
stores with the experiment: a restored sweep's report still tells them apart.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from trainers import console, feed
from trainers.console import say
from trainers.errors import diverged_message

from .records import ENDED
from .trial import run_name


def _short(trial_id: str) -> str:
    return trial_id.rsplit("_", 1)[-1]


def _values(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()) or "base spec"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class TrialState:
    trial_id: str
    values: str
    status: str = "pending"  # pending, running, paused, completed, stopped early, failed, interrupted
    step: int = 0
    total_steps: int | None = None
    samples_per_s: float | None = None
    rounds: int = 0
    best: float | None = None
    last: float | None = None


@dataclass
class SweepState:
    """What the view shows; pure, so tests drive it without Ray."""

    metric: str
    mode: str
    started: float = field(default_factory=time.monotonic)
    trials: dict[str, TrialState] = field(default_factory=dict)
    best: tuple[float, str] | None = None
    planned: int = 0  # trials Tune knows of, pending ones included
    steps_seen: int = 0  # steps trained while this view watched (for the ETA)

    def trial(self, trial_id: str, config: dict[str, Any] | None = None) -> TrialState:
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialState(trial_id, _values(config or {}))
        return self.trials[trial_id]

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def on_step(self, trial_id: str, event: dict[str, Any]) -> None:
        t = self.trial(trial_id)
        step = int(event.get("step", 0))
        self.steps_seen += max(0, step - t.step)
        t.step, t.total_steps = step, event.get("total_steps") or t.total_steps
        t.samples_per_s = event.get("samples_per_s")
        if t.status == "pending":
            t.status = "running"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t.status] = out.get(t.status, 0) + 1
        pending = max(0, self.planned - len(self.trials))
        if pending:
            out["pending"] = out.get("pending", 0) + pending
        return out

    def eta_s(self) -> float | None:
        """Time left if every unfinished trial trains to its end (early stopping only shortens it):
        the steps still to train over the rate seen so far, trial start-up included."""
        known = [t.total_steps for t in self.trials.values() if t.total_steps]
        if not known or self.steps_seen <= 0:
            return None
        typical = sum(known) / len(known)
        left = 0.0
        for t in self.trials.values():
            if t.status in ("running", "pending"):
                left += max(0.0, (t.total_steps or typical) - t.step)
        left += typical * max(0, self.planned - len(self.trials))
        rate = self.steps_seen / max(time.monotonic() - self.started, 1e-9)
        return left / rate

    def headline(self) -> str:
        order = ("running", "paused", "pending", "completed", "stopped early", "failed", "interrupted")
        counts = self.counts()
        states = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
        best = (f"; best {self.metric} {self.best[0]:.4f} (trial {_short(self.best[1])})" if self.best else "")
        eta = self.eta_s()
        left = f"; ETA {_duration(eta)}" if eta is not None and counts.get("running") else ""
        return f"sweep: {max(self.planned, len(self.trials))} trials: {states}{best}{left}"

    def running_line(self) -> str:
        parts = []
        for t in self.trials.values():
            if t.status == "running" and t.step:
                sps = f", {t.samples_per_s:.1f} samples/s" if t.samples_per_s else ""
                parts.append(f"{_short(t.trial_id)} step {t.step}/{t.total_steps or '?'}{sps}")
        return "; ".join(parts)

    def table(self):
        from rich.table import Table

        table = Table(title=self.headline(), title_justify="left", expand=False, pad_edge=False, box=None)
        for col, justify in (("trial", "left"), ("values", "left"), ("status", "left"), ("step", "right"),
                             ("samples/s", "right"), ("rounds", "right"), (f"best {self.metric}", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for t in self.trials.values():
            best = f"{t.best:.4f}" if t.best is not None else ""
            mark = " *" if self.best and self.best[1] == t.trial_id else ""
            table.add_row(_short(t.trial_id), t.values, t.status,
                          f"{t.step}/{t.total_steps}" if t.total_steps else (str(t.step) if t.step else ""),
                          f"{t.samples_per_s:.1f}" if t.samples_per_s and t.status == "running" else "",
                          str(t.rounds or ""), best + mark)
        return table


class SweepView:
    """The console view (trainers.console.View) over a SweepState."""

    def __init__(self, state: SweepState, stream: TextIO, *, live: bool, every_s: float):
        self.state, self._stream, self._every_s = state, stream, every_s
        self._lock = threading.RLock()
        self._live = None
        self._last_line = time.monotonic()
        self._trial_of_pid: dict[int, str] = {}  # rank-0 worker processes, learnt from their step events
        if live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(state.table(), console=Console(file=stream, force_terminal=True), auto_refresh=True,
                              refresh_per_second=2, transient=False, redirect_stdout=False, redirect_stderr=False,
                              get_renderable=self.state.table)
            self._live.start()

    @property
    def live(self) -> bool:
        return self._live is not None

    def print(self, text: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self._stream.write(text + "\n")
                self._stream.flush()

    def on_progress(self, event: dict[str, Any]) -> None:
        run = str(event.get("run") or "")
        if event.get("kind") == "step" and run.startswith(run_name("")):
            trial_id = run.removeprefix(run_name(""))
            with self._lock:
                self.state.on_step(trial_id, event)
                if event.get("pid"):
                    self._trial_of_pid[event["pid"]] = trial_id
            self.tick()
        # eval events: the callback reports each round from Tune's side

    def label(self, event: dict[str, Any]) -> str | None:
        """`trial <id>` for a line from a trial's rank-0 worker (its step events named it)."""
        trial_id = self._trial_of_pid.get(event.get("pid"))
        return f"trial {_short(trial_id)}" if trial_id else None

    def tick(self, force: bool = False) -> None:
        """Without a live table: a status line every `every_s` seconds."""
        if self._live is not None:
            return
        now = time.monotonic()
        if not force and now - self._last_line < self._every_s:
            return
        self._last_line = now
        running = self.state.running_line()
        self.print(f"{console.PREFIX} {self.state.headline()}" + (f"; {running}" if running else ""))

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.update(self.state.table(), refresh=True)
                self._live.stop()
                self._live = None


class SweepProgress(Callback):
    def __init__(self, metric: str, mode: str, every_s: float = 30.0, stream: TextIO | None = None,
                 live: bool | None = None):
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.state = SweepState(metric, mode)
        self._stream, self._live = stream, live
        self._view: SweepView | None = None
        self._previous = None
        self._diverged: set[str] = set()  # trials whose loss blew up: said once, as a failure

    # --- the view's life: the sweep's ----------------------------------------------------------------

    def setup(self, **info):
        stream = self._stream or console.terminal()
        live = self._live if self._live is not None else (stream.isatty() and not console.verbose())
        self._view = SweepView(self.state, stream, live=live, every_s=self.every_s)
        self._previous = console.set_view(self._view)

    def on_experiment_end(self, trials, **info):
        self._close()

    def _close(self) -> None:
        if self._view is not None:
            # The trials' last lines (a trial waits until its lines reached the feed) still go through
            # this view, which names the trial that said them.
            feed.flush()
            self._view.close()
            console.set_view(self._previous)
            self._view = None

    def _note(self, text: str) -> None:
        """A notable event: above the live table, or one line."""
        say(text)

    # --- Tune's events ------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        t = self.state.trial(trial.trial_id, trial.config)
        was = t.status
        t.status = "running"
        if was == "paused":  # the synchronous scheduler promoted it (tuning/schedulers.py)
            self._note(f"trial {_short(trial.trial_id)} resumed after round {t.rounds} ({t.values})")
        else:
            self._note(f"trial {_short(trial.trial_id)} started ({t.values})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self.state.trial(trial.trial_id, trial.config)
        if result.get("diverged") and trial.trial_id not in self._diverged:
            # Said here, not only from on_trial_error: a scheduler that stops the trial on this
            # round's -inf score wins the race with fit()'s TrainingDivergedError.
            self._diverged.add(trial.trial_id)
            t.status = "failed"
            lr = trial.config.get("optim.lr")
            self._note(f"trial {_short(trial.trial_id)} failed: " + diverged_message(
                result.get("train_loss"), result.get("step"), lr if isinstance(lr, (int, float)) else None))
        value = result.get(self.metric)
        t.rounds = int(result.get("training_iteration") or t.rounds)
        if isinstance(result.get("step"), int):
            t.step = max(t.step, result["step"])
        if isinstance(value, (int, float)) and math.isfinite(value):
            t.last = float(value)
            if t.best is None or (value > t.best if self.mode == "max" else value < t.best):
                t.best = float(value)
            if self.state.better(value):
                self.state.best = (float(value), trial.trial_id)
                self._note(f"new best: trial {_short(trial.trial_id)} {self.metric} {value:.4f} at round "
                           f"{t.rounds} (step {result.get('step')})")
        stopped = bool(result.get("done"))  # only a scheduler STOP sets done before the trial ends
        if stopped:
            result[ENDED] = "stopped"  # callbacks may amend the result; Tune stores it after them
            t.status = "failed" if trial.trial_id in self._diverged else "stopped early"
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        console.log_line(f"{console.PREFIX} trial {_short(trial.trial_id)} round {t.rounds} "
                         f"(step {result.get('step')}): {self.metric} {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result
        if trial.has_reported_at_least_once and ENDED not in last:
            # The trial function returned (Tune then marks its last result done) or the sweep
            # cut it off (time budget). update_last_result makes Tune save the note.
            trial.update_last_result({**last, ENDED: "completed" if last.get("done") else "interrupted"})
        ended = trial.last_result.get(ENDED, "ended")
        t = self.state.trial(trial.trial_id, trial.config)
        if trial.trial_id in self._diverged:
            return  # said when it diverged
        t.status = {"stopped": "stopped early"}.get(ended, ended)
        best = f"; best {self.metric} {t.best:.4f}" if t.best is not None else ""
        self._note(f"trial {_short(trial.trial_id)} {'stopped early by the scheduler' if ended == 'stopped' else ended}"
                   f" after {t.rounds} round(s), step {t.step}{best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        t = self.state.trial(trial.trial_id, trial.config)
        t.status = "failed"
        if trial.trial_id in self._diverged:
            return  # said when it diverged
        self._note(f"trial {_short(trial.trial_id)} failed: {_last_line(trial.error_file)}")

    def on_step_end(self, iteration, trials, **info):
        self.state.planned = len(trials)
        for trial in trials:  # Tune has no pause event: a trial waiting at a synchronous rung
            t = self.state.trials.get(trial.trial_id)
            if t is not None and t.status == "running" and trial.status == "PAUSED":
                t.status = "paused"
                self._note(f"trial {_short(trial.trial_id)} paused after round {t.rounds}, waiting for the others to "
                           "reach the rung")
        if self._view is not None:
            self._view.tick()


def _last_line(path: str | None) -> str:
    try:
        lines = [x for x in Path(path).read_text().splitlines() if x.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1].strip() if lines else "see the trial's error.txt"

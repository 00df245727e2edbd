"""The sweep's early-stopping schedulers, and their state kept across `--resume`.

- `asha` (default): Ray Tune's ASHA, asynchronous: a trial reaching a rung is judged at once against
  the results already there, so nothing waits. Best with many trials (tens); with few, the first
  trials reach empty rungs and go through, and little is saved.
- `successive_halving`: synchronous (tuning/halving.py): every trial waits at the rung until all have
  reached it, then the best 1/reduction_factor go on. With few trials it stops half of them at the
  first rung. A waiting trial is paused: Tune ends its process (the Train run is aborted, its workers
  freed) and later runs the trial function again, which continues the Train run from its latest
  checkpoint (trials are Train runs named by trial id; tuning/trial.py). Each pause costs a restart.
- `none`: every trial trains to its end.

Rungs count evaluation rounds over the whole Train run (tuning/rounds.py), so a restarted trial is
judged at its real round.

Resume: Tune does not save its scheduler. It pickles the one given to the Tuner into tuner.pkl before
the sweep runs, and a restored sweep adds every trial to that blank copy, so the rungs' results would
be lost and resumed trials judged afresh. Tune does save the state of its callbacks, in the same
experiment checkpoint as the trials' statuses, and restores it before it re-adds the trials.
`KeepSchedulerState` is such a callback: it holds the scheduler itself, so its state is saved with
the trials it describes. It relies on one thing: the callback and the scheduler come out of
tuner.pkl's one pickle as one object, as they went in (tests/unit/test_tuning_schedulers.py checks
that on Tune's own Tuner; tests/integration/test_tuning.py that a killed and resumed sweep keeps its
rungs). A resumed sweep whose scheduler meets trials with results but was given no state says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from trainers.console import say

from .config import SchedulerSection
from .halving import Decision, Halving
from .records import ENDED

# One Tune result per evaluation round; training_iteration is the run's round (tuning/rounds.py).
TIME_ATTR = TRAINING_ITERATION
# ASHA needs a ceiling; with none configured, trials run as many rounds as training makes.
_UNBOUNDED_ROUNDS = 10**6


class KeepSchedulerState(Callback):
    """Saves the scheduler's state with every experiment checkpoint; puts it back on restore."""

    def __init__(self, scheduler: ResumableASHA | SyncHalving):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"scheduler": self.scheduler.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class _NotRestoredWarning:
    """Says once when a resumed sweep's scheduler met trials with results but was given no state."""

    def __init__(self) -> None:
        self.restored = False
        self._said = False

    def check(self, name: str, trial: Trial, first_rung: float) -> None:
        if self.restored or self._said:
            return
        if (trial.last_result or {}).get(TIME_ATTR, 0) >= first_rung:
            self._said = True
            say(f"resumed sweep: {name}'s rungs were not saved with it (a sweep started by an older zerotune?); "
                "trials that continue are judged afresh")


class ResumableASHA(AsyncHyperBandScheduler):
    """Ray Tune's ASHA whose rungs (the results recorded at each) can be saved and put back."""

    _own_metric = False  # tune.scheduler.metric given; also what a scheduler pickled by an older zerotune reads

    def __init__(self, *, rung_metric: str | None = None, rung_mode: str | None = None, **kwargs: Any):
        super().__init__(time_attr=TIME_ATTR, metric=rung_metric, mode=rung_mode, **kwargs)
        self._own_metric = rung_metric is not None
        self._assigned: dict[str, int] = {}  # trial -> bracket index, from a restored state
        self._restore_note = _NotRestoredWarning()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if self._own_metric:  # tune.scheduler.metric: the rungs keep theirs; the sweep's picks the winner
            return True
        return super().set_search_properties(metric, mode, **spec)

    def state_dict(self) -> dict[str, Any]:
        # _Bracket._rungs: [(milestone, {trial_id: signed score})], highest milestone first (Ray 2.60).
        return {
            "rungs": [[(m, dict(recorded)) for m, recorded in b._rungs] for b in self._brackets],
            "brackets": {t: self._brackets.index(b) for t, b in self._trial_info.items()},
            "num_stopped": self._num_stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for bracket, rungs in zip(self._brackets, state["rungs"], strict=True):
            bracket._rungs = [(m, dict(recorded)) for m, recorded in rungs]
        self._assigned = dict(state["brackets"])
        self._num_stopped = state["num_stopped"]
        self._restore_note.restored = True
        results = sum(len(r) for rungs in state["rungs"] for _, r in rungs)
        trials = len({t for rungs in state["rungs"] for _, r in rungs for t in r})
        say(f"resumed sweep: ASHA's rungs restored ({results} result(s) of {trials} trial(s)); "
            "trials that continue are judged against them")

    def recorded(self) -> dict[float, dict[str, float]]:
        """Milestone -> {trial id: signed score} over every bracket (for tests and the report)."""
        out: dict[float, dict[str, float]] = {}
        for b in self._brackets:
            for m, recorded in b._rungs:
                out.setdefault(m, {}).update(recorded)
        return out

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        retried = trial.trial_id in self._trial_info  # Tune adds a trial it retries after a failure again
        super().on_trial_add(tune_controller, trial)
        if trial.trial_id in self._assigned:  # a resumed trial keeps its bracket and what it recorded there
            self._trial_info[trial.trial_id] = self._brackets[self._assigned[trial.trial_id]]
        if not retried:
            self._restore_note.check("ASHA", trial, min(m for b in self._brackets for m, _ in b._rungs))


class SyncHalving(FIFOScheduler):
    """Synchronous successive halving (tuning/halving.py) over Tune's pause and resume.

    Tune starts every PENDING trial it has resources for, and a trial's own process asks for no CPU
    (its Train workers do), so Tune's max_concurrent_trials is what normally bounds the trials at once.
    It counts a paused trial as live, though, so trials waiting at a rung would keep the others from
    ever starting. Here Tune is given no limit, and this scheduler admits trials itself: it holds every
    trial it is given as PAUSED and starts at most `concurrency` at a time (choose_trial_to_run).
    Tune then creates every trial up front: Optuna suggests them all before any result, as random
    search would (it samples its first ten at random anyway)."""

    _supports_buffered_results = False  # a decision per result: a buffered batch would run past the rung
    _own_metric = False  # tune.scheduler.metric given; also what a scheduler pickled by an older zerotune reads

    def __init__(self, *, grace_period: int, reduction_factor: float, max_t: int | None, trials: int,
                 concurrency: int, rung_metric: str | None = None, rung_mode: str | None = None):
        super().__init__()
        self.halving = Halving(grace_period=grace_period, reduction_factor=reduction_factor, expected=trials,
                               max_t=max_t)
        self.concurrency = concurrency
        self._metric: str | None = rung_metric
        self._sign = 1.0 if rung_mode != "min" else -1.0
        self._own_metric = rung_metric is not None
        self._restore_note = _NotRestoredWarning()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if self._own_metric:  # tune.scheduler.metric: the rungs keep theirs; the sweep's picks the winner
            return True
        if metric:
            self._metric = metric
        if mode:
            self._sign = 1.0 if mode == "max" else -1.0
        return True

    # --- state kept across --resume --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        h = self.halving
        return {"order": list(h.order), "level": dict(h.level), "scores": {k: dict(v) for k, v in h.scores.items()},
                "decided": sorted(h.decided), "stopped": sorted(h.stopped), "left": sorted(h.left)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        h = self.halving
        h.order, h.level = list(state["order"]), dict(state["level"])
        h.scores = {int(k): dict(v) for k, v in state["scores"].items()}
        h.decided, h.stopped, h.left = set(state["decided"]), set(state["stopped"]), set(state["left"])
        self._restore_note.restored = True
        say(f"resumed sweep: successive halving restored ({sum(map(len, h.scores.values()))} rung result(s), "
            f"{len(h.stopped)} trial(s) halved out); trials continue from their rungs")

    # --- Tune's events -----------------------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        retried = trial.trial_id in self.halving.level  # Tune adds a trial it retries after a failure again
        self.halving.add(trial.trial_id)
        if not retried:
            self._restore_note.check("successive halving", trial, self.halving.milestone(0))
        if trial.status == Trial.PENDING:
            # Held until choose_trial_to_run admits it (see the class docstring). Set before the
            # controller files the trial by its status, which it does right after this call.
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if TIME_ATTR not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        value = float(result[self._metric])
        score = self._sign * value if not math.isnan(value) else -math.inf
        mine, others = self.halving.on_result(trial.trial_id, int(result[TIME_ATTR]), score)
        self._apply(tune_controller, others, current=trial)
        return {"continue": TrialScheduler.CONTINUE, "pause": TrialScheduler.PAUSE,
                "stop": TrialScheduler.STOP}[mine]

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._apply(tune_controller, self.halving.on_leave(trial.trial_id), current=trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._apply(tune_controller, self.halving.on_leave(trial.trial_id), current=trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._apply(tune_controller, self.halving.on_leave(trial.trial_id), current=trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = tune_controller.get_trials()
        admitted = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        if admitted >= self.concurrency:
            return None
        h = self.halving
        ready = [t for t in trials if t.status == Trial.PAUSED and t.trial_id in h.level and h.runnable(t.trial_id)]
        if ready:
            # Lower rungs first, then the order trials were added (the search's order).
            return min(ready, key=lambda t: (h.level[t.trial_id], h.order.index(t.trial_id)))
        if admitted == 0 and len(h.order) >= h.expected:
            self._apply(tune_controller, h.force(), current=None)
        return None

    def _apply(self, tune_controller, decisions: dict[str, Decision], current: Trial | None) -> None:
        """Carry out decisions for trials other than `current`: a promoted trial waits PAUSED until
        choose_trial_to_run starts it again; a halved-out one is stopped, noted as stopped early."""
        if not decisions:
            return
        by_id = {t.trial_id: t for t in tune_controller.get_trials()}
        for trial_id, decision in decisions.items():
            trial = by_id.get(trial_id)
            if decision != "stop" or trial is None or trial is current:
                continue
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                continue
            # How the trial ended, on its last result (tuning/progress.py reads it; Tune stores it).
            trial.update_last_result({**(trial.last_result or {}), ENDED: "stopped"})
            tune_controller.stop_trial(trial)

    def debug_string(self) -> str:
        h = self.halving
        return (f"SyncHalving: rungs {[h.milestone(k) for k in range(len(h.decided) + 1)]}, decided {sorted(h.decided)}, "
                f"stopped {len(h.stopped)}")


def build_scheduler(scheduler: SchedulerSection, *, trials: int, concurrency: int,
                    mode_of: Callable[[str], str]) -> tuple[TrialScheduler, list[Callback], int | None]:
    """(the scheduler, the callbacks it needs, max_concurrent_trials for Tune) for tune.scheduler.
    `mode_of`: a metric's better direction (the task's), for scheduler.metric."""
    s = scheduler
    rungs = {"rung_metric": s.metric, "rung_mode": mode_of(s.metric)} if s.metric else {}
    if s.type == "none":
        return FIFOScheduler(), [], concurrency
    if s.type == "asha":
        asha = ResumableASHA(grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                             max_t=s.max_t or _UNBOUNDED_ROUNDS, **rungs)
        return asha, [KeepSchedulerState(asha)], concurrency
    sync = SyncHalving(grace_period=s.grace_period, reduction_factor=s.reduction_factor, max_t=s.max_t,
                       trials=trials, concurrency=concurrency, **rungs)
    return sync, [KeepSchedulerState(sync)], None

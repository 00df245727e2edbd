"""A sweep's budget and its time/cost estimate.

`tune.budget` (wall time and/or node-hours) is `SweepBudget`, a Tune stopper whose clock starts at
the sweep's first evaluation round: before it the cluster is still coming up (nodes, the data, the
first model), which buys no result, and a budget spent there would end the sweep with no winner.
When it runs out Tune stops the running trials and the best round so far wins. Node-hours are the
sweep's wall time times the nodes its concurrent trials occupy, so `node_hours / nodes_in_use` is
the wall time they buy. `tune.time_budget_s` stays Ray Tune's own hard limit, counted from the start.

The estimate needs a trial's throughput, which no formula knows for a CPU or GPU it has not seen:
`zerotune plan --calibrate` measures a few steps of the smallest and largest configuration
(tuning/calibrate.py); during the sweep, the first evaluation round of the first trial measures it
again (samples/s over every worker, and the trial's total steps), and `SweepEstimate` prints the
sweep's expected wall time and node-hours then, under its scheduler (ASHA stops most trials early),
against the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ray.tune import Callback
from ray.tune.stopper import Stopper

from trainers.config import ScalingSection
from trainers.console import say

from .config import SchedulerSection, TuneSection


def nodes_in_use(scaling: ScalingSection, concurrency: int, nodes: Sequence[Mapping[str, float]]) -> int:
    """Nodes the sweep's concurrent trials occupy: their workers packed onto the largest alive node."""
    per_node = 0
    for node in nodes:
        by_cpu = math.floor(node.get("CPU", 0.0) / scaling.cpus_per_worker + 1e-9)
        by_gpu = math.floor(node.get("GPU", 0.0) / scaling.gpus_per_worker + 1e-9) if scaling.use_gpu else by_cpu
        per_node = max(per_node, min(by_cpu, by_gpu))
    return max(1, math.ceil(concurrency * scaling.num_workers / max(per_node, 1)))


def time_budget_s(tune: TuneSection, nodes: int) -> float | None:
    """The wall time `tune.budget` buys (the smaller of its wall time and its node-hours on `nodes`
    nodes), or None when the spec sets no budget."""
    if tune.budget is None:
        return None
    limits = [tune.budget.wall_seconds]
    if tune.budget.node_hours is not None:
        limits.append(tune.budget.node_hours * 3600 / max(nodes, 1))
    given = [x for x in limits if x is not None]
    return min(given) if given else None


class SweepBudget(Stopper):
    """Stops every trial once `seconds` have passed since the sweep's first evaluation round.

    Tune asks `stop_all` on every pass of its loop and calls the stopper with every result, both in
    the driver, so one instance sees the first round and the clock."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started: float | None = None  # time.monotonic() at the first round
        self.spent_at_stop: float | None = None

    def __call__(self, trial_id, result) -> bool:
        if self.started is None:
            self.started = time.monotonic()
        return False

    def stop_all(self) -> bool:
        if self.spent_at_stop is not None:
            return True
        if self.started is None or time.monotonic() - self.started < self.seconds:
            return False
        self.spent_at_stop = time.monotonic() - self.started
        say(f"tune.budget spent: {_duration(self.spent_at_stop)} since the first round (budget "
            f"{_duration(self.seconds)}); stopping the running trials, the best round so far wins")
        return True

    def __setstate__(self, state: dict) -> None:
        # A restored sweep (--resume) starts its clock again at its first round.
        self.__dict__.update(state, started=None, spent_at_stop=None)


def asha_work_fraction(scheduler: SchedulerSection, rounds: int, trials: int) -> float:
    """The share of `trials` x `rounds` that ASHA (or successive halving) is expected to run: a trial
    reaching rung k (grace_period x reduction_factor^k rounds) goes on with probability
    1/reduction_factor, and the best trial always runs in full (up to max_t rounds)."""
    if scheduler.type == "none" or rounds <= 0:
        return 1.0
    ceiling = _asha_ceiling(scheduler, rounds)
    eta, rung, done, work, share = scheduler.reduction_factor, float(scheduler.grace_period), 0.0, 0.0, 1.0
    while done < ceiling:
        upto = min(rung, ceiling)
        work += share * (upto - done)
        done, rung, share = upto, rung * eta, max(share / eta, 1 / max(trials, 1))
    return min(1.0, work / rounds)


def _asha_ceiling(scheduler: SchedulerSection, rounds: int) -> int:
    """Rounds the longest trial runs: ASHA's max_t cuts every trial there (no scheduler: all)."""
    return min(rounds, scheduler.max_t or rounds) if scheduler.type != "none" else rounds


@dataclass(frozen=True)
class Estimate:
    trial_s: float  # one trial's full schedule
    wall_s: float  # the sweep under its scheduler
    wall_max_s: float  # no trial stopped early
    node_hours: float

    def line(self, budget_s: float | None, nodes: int) -> str:
        text = (f"about {_duration(self.wall_s)} wall, {self.node_hours:.2f} node-hours on {nodes} node(s) "
                f"(a full trial {_duration(self.trial_s)}; at most {_duration(self.wall_max_s)} if no trial "
                "stops early)")
        if budget_s is not None:
            fits = self.wall_s <= budget_s
            text += (f"; budget {_duration(budget_s)}: " + ("enough" if fits else "the sweep will be cut off, "
                     "the trials still running then stopped and the best result so far kept"))
        return text


def estimate(*, trials: int, concurrency: int, total_steps: int, global_batch: int, samples_per_s: float,
             rounds: int, scheduler: SchedulerSection, nodes: int) -> Estimate:
    """The sweep's time and cost from one trial's measured throughput."""
    full = total_steps * global_batch / max(samples_per_s, 1e-9)  # every step of one trial
    return sweep_estimate(trial_times=[full], trials=trials, concurrency=concurrency, rounds=rounds,
                          scheduler=scheduler, nodes=nodes)


def sweep_estimate(*, trial_times: Sequence[float], trials: int, concurrency: int, rounds: int,
                   scheduler: SchedulerSection, nodes: int) -> Estimate:
    """The sweep's time and cost from the full-schedule time of each configuration it may run (its
    trials spread evenly over them): the longest trial runs in full, the rest as the scheduler lets."""
    mean = sum(trial_times) / max(len(trial_times), 1)
    cut = _asha_ceiling(scheduler, rounds) / rounds if rounds > 0 else 1.0  # ASHA's max_t ends every trial there
    trial_s = max(trial_times, default=0.0) * cut
    waves = math.ceil(trials / max(concurrency, 1))
    wall_max = max(trial_s, waves * mean * cut)
    work = trials * mean * asha_work_fraction(scheduler, rounds, trials)
    wall = max(trial_s, work / max(concurrency, 1)) if trials else 0.0
    wall = min(wall, wall_max)
    return Estimate(trial_s=trial_s, wall_s=wall, wall_max_s=wall_max, node_hours=wall * nodes / 3600)


def first_stop_s(scheduler: SchedulerSection, *, round_s: float, setup_s: float, trial_s: float, trials: int,
                 concurrency: int) -> float | None:
    """About how long after the sweep's first round its scheduler can first stop a trial (None: never).

    ASHA judges a trial at the first rung against those already there: the second trial to arrive is
    the first that can stop, so with one trial at a time, after a whole first trial. Successive
    halving waits for every trial at the rung: each wave of trials takes its start-up and the rung's
    rounds. Trials of a wave start together, so the first wave's first round is the clock's start."""
    if scheduler.type == "none" or trials < 2:
        return None
    rung = scheduler.grace_period * round_s
    if scheduler.type == "asha":
        return rung - round_s if concurrency >= 2 else trial_s - round_s + setup_s + rung
    waves = math.ceil(trials / max(concurrency, 1))
    return rung - round_s + (waves - 1) * (setup_s + rung)


def rung_budget_line(budget_s: float | None, stop_s: float | None, scheduler: SchedulerSection,
                     round_s: float) -> str | None:
    """A warning when the budget ends before the scheduler can stop any trial (None: it does not)."""
    if budget_s is None or stop_s is None or budget_s >= stop_s:
        return None
    every = " every trial at" if scheduler.type == "successive_halving" else ""
    return (f"tune.budget {_duration(budget_s)} ends before the scheduler can stop any trial (about {_duration(stop_s)} "
            f"from the first round: grace_period {scheduler.grace_period} round(s) of about {_duration(round_s)}{every} "
            "the first rung), so early stopping saves nothing. Raise tune.budget, lower tune.scheduler.grace_period, "
            "or evaluate more often (train.schedule.eval_every_steps)")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class SweepEstimate(Callback):
    """Prints the sweep's estimate once, from the first result that carries a measured throughput."""

    def __init__(self, *, trials: int, concurrency: int, global_batch: int, eval_every_steps: int | None,
                 scheduler: SchedulerSection, nodes: int, budget_s: float | None):
        self.trials, self.concurrency, self.global_batch = trials, concurrency, global_batch
        self.eval_every, self.scheduler, self.nodes, self.budget_s = eval_every_steps, scheduler, nodes, budget_s
        self.done: Estimate | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.done is not None or not result.get("samples_per_s") or not result.get("total_steps"):
            return
        total, step = int(result["total_steps"]), int(result.get("step") or 0)
        # One Tune result per evaluation round: every eval_every_steps steps, or one per epoch.
        per_round = self.eval_every or max(step, 1)
        sps = float(result["samples_per_s"])
        self.done = estimate(trials=self.trials, concurrency=self.concurrency, total_steps=total,
                             global_batch=self.global_batch, samples_per_s=sps,
                             rounds=math.ceil(total / per_round), scheduler=self.scheduler, nodes=self.nodes)
        say(f"sweep estimate (measured {sps:.1f} samples/s, {total} steps per trial): "
            + self.done.line(self.budget_s, self.nodes))
        # The budget against the first rung: knowable only now, from a measured round.
        round_s = per_round * self.global_batch / sps
        setup_s = sum(float(v) for k, v in result.items() if k.startswith("setup_") and isinstance(v, (int, float)))
        stop_s = first_stop_s(self.scheduler, round_s=round_s, setup_s=setup_s, trial_s=self.done.trial_s,
                              trials=self.trials, concurrency=self.concurrency)
        warning = rung_budget_line(self.budget_s, stop_s, self.scheduler, round_s)
        if warning:
            say(warning)

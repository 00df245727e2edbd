"""Synchronous successive halving, as bookkeeping without Ray (tuning/schedulers.py drives Tune with it).

Every trial trains to the first rung (grace_period rounds) and waits there; when all have arrived,
the best 1/reduction_factor of them (at least one) go on to the next rung (grace_period x
reduction_factor^k rounds) and the rest stop. Once a single trial is left it trains to its end. So
with few trials, the first rung already stops half of them, where ASHA lets the first trials to
arrive through on an empty rung.

Scores are signed so that higher is better. A trial that ends on its own (its training is over, or it
failed) leaves the race; one that reached the rung before it ended still counts there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Decision = Literal["continue", "pause", "stop"]


@dataclass
class Halving:
    grace_period: int
    reduction_factor: float
    expected: int  # trials the sweep will add: rung 0 waits for every one of them
    max_t: int | None = None
    order: list[str] = field(default_factory=list)  # trial ids as added
    level: dict[str, int] = field(default_factory=dict)  # the rung each trial works towards
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # rung -> trial -> score there
    decided: set[int] = field(default_factory=set)  # rungs whose halving is done
    stopped: set[str] = field(default_factory=set)  # halved out
    left: set[str] = field(default_factory=set)  # ended on their own (finished or failed)

    def milestone(self, k: int) -> int:
        """Rounds a trial trains before rung k judges it: grace_period x reduction_factor^k, strictly rising."""
        m = self.grace_period
        for _ in range(k):
            m = max(m + 1, math.ceil(m * self.reduction_factor))
        return m

    def has_rung(self, k: int) -> bool:
        """Rung k can stop someone: it comes before max_t, and more than one trial may compete there."""
        if self.max_t is not None and self.milestone(k) >= self.max_t:
            return False
        if k == 0:
            return max(len(self.order), self.expected) > 1
        return len([t for t in self.competitors(k) if t not in self.left]) > 1

    def add(self, trial_id: str) -> None:
        if trial_id not in self.level:
            self.order.append(trial_id)
            self.level[trial_id] = 0

    def competitors(self, k: int) -> list[str]:
        """Trials that run for rung k: every trial at rung 0; those promoted past k-1 after."""
        if k == 0:
            return list(self.order)
        return [t for t in self.order if self.level[t] >= k and t not in self.stopped]

    def waiting(self, trial_id: str) -> bool:
        """Reached its rung and waits for the others (its rung not decided yet)."""
        k = self.level[trial_id]
        return trial_id in self.scores.get(k, {}) and k not in self.decided

    def runnable(self, trial_id: str) -> bool:
        """May train now: not stopped, not ended, not waiting at a rung."""
        return trial_id not in self.stopped and trial_id not in self.left and not self.waiting(trial_id)

    def on_result(self, trial_id: str, rounds: int, score: float) -> tuple[Decision, dict[str, Decision]]:
        """The decision for this trial after a result at `rounds`, and any for other (waiting) trials:
        'continue' (go on, or be resumed) or 'stop'."""
        if trial_id in self.stopped or (self.max_t is not None and rounds >= self.max_t):
            return "stop", {}
        others: dict[str, Decision] = {}
        while True:
            k = self.level[trial_id]
            if not self.has_rung(k) or rounds < self.milestone(k):
                return "continue", others
            self.scores.setdefault(k, {}).setdefault(trial_id, score)  # the first result at the rung counts
            if k in self.decided:
                # Its rung was decided without it (see force): it goes on if it beats the last one promoted.
                promoted = [v for t, v in self.scores[k].items() if self.level[t] > k and t != trial_id]
                if promoted and score < min(promoted):
                    self.stopped.add(trial_id)
                    return "stop", others
                self.level[trial_id] = k + 1
                continue
            decisions = self._decide(k)
            if decisions is None:
                return "pause", others
            mine = decisions.pop(trial_id, "continue")
            others.update(decisions)
            if mine == "stop":
                return "stop", others
            # promoted: the next rung may already be behind it (a result that skipped rounds)

    def on_leave(self, trial_id: str) -> dict[str, Decision]:
        """A trial ended on its own: the rung it worked towards may now be complete."""
        if trial_id not in self.level or trial_id in self.stopped or trial_id in self.left:
            return {}
        self.left.add(trial_id)
        decisions = self._decide(self.level[trial_id])
        return decisions or {}

    def _decide(self, k: int, force: bool = False) -> dict[str, Decision] | None:
        """Halve rung k once every competitor has a score there or has left; None while some still train.
        `force`: with the scores it has."""
        if k in self.decided:
            return None
        arrived = self.scores.get(k, {})
        competing = self.competitors(k)
        if not force and ((k == 0 and len(self.order) < self.expected)
                          or any(t not in arrived and t not in self.left for t in competing)):
            return None
        self.decided.add(k)
        ranked = sorted((t for t in competing if t in arrived), key=lambda t: arrived[t], reverse=True)
        keep = max(1, math.ceil(len(ranked) / self.reduction_factor))
        out: dict[str, Decision] = {}
        for i, t in enumerate(ranked):
            if i < keep:
                self.level[t] = k + 1
            else:
                self.stopped.add(t)
            if t not in self.left:
                out[t] = "continue" if i < keep else "stop"
        return out

    def force(self) -> dict[str, Decision]:
        """Nothing trains and nothing may start, yet trials wait at a rung (a trial the sweep never added
        or started would hold every other one forever): decide the lowest such rung with what it has."""
        waiting = sorted({self.level[t] for t in self.order if self.waiting(t)})
        return (self._decide(waiting[0], force=True) or {}) if waiting else {}

"""What each trial did, read back from Ray Tune's results into plain records the report uses.

One `Round` per evaluation round (one Tune result); `TrialRecord.outcome` says how the trial
ended in words a person reads: completed, stopped early (by the scheduler), interrupted (time
budget, or a driver that went away), failed, or not started.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import ValidationError

from trainers.rounds import RoundReport

Outcome = Literal["completed", "stopped early", "interrupted", "failed", "not started"]

# How a trial's run ended, as tuning.progress saw it happen and stored on the trial's last result
# (Tune keeps that result with the experiment, so a restored sweep still knows):
# "stopped" (by the scheduler), "completed" (the trial function returned) or "interrupted".
ENDED = "zerotune_ended"


@dataclass(frozen=True)
class Round:
    step: int | None
    value: float | None  # the sweep's metric; None when missing or not finite
    checkpoint: str | None
    report: RoundReport | None = None  # what the training loop reported (None: not a loop's round)


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    rounds: tuple[Round, ...]
    outcome: Outcome
    wall_s: float
    error: str | None = None

    def best_round(self, mode: str) -> Round | None:
        scored = [r for r in self.rounds if r.value is not None]
        if not scored:
            return None
        return max(scored, key=lambda r: r.value if mode == "max" else -r.value)

    @property
    def final_value(self) -> float | None:
        return self.rounds[-1].value if self.rounds else None

    @property
    def trainable_params(self) -> int | None:
        return next((r.report.trainable_params for r in reversed(self.rounds) if r.report), None)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def round_from_row(row: dict[str, Any], metric: str, locate: Callable[[str], str] = str) -> Round:
    """One Tune result row: the loop's RoundReport (Tune's own keys are ignored by the model).
    `locate` turns Tune's checkpoint path (on the storage filesystem) into a location."""
    step = _finite(row.get("step"))
    ckpt = row.get("checkpoint_path")
    ckpt = locate(ckpt) if isinstance(ckpt, str) and ckpt else None
    try:
        report = RoundReport.from_ray(row)
    except ValidationError:
        report = None  # a row the loop did not write (e.g. a trial that failed before its first round)
    return Round(step=int(step) if step is not None else None, value=_finite(row.get(metric)),
                 checkpoint=ckpt, report=report)


def outcome_of(last: dict[str, Any], rounds: tuple[Round, ...], failed: bool, max_t: int | None,
               full_steps: int | None) -> Outcome:
    """How a trial ended. `full_steps`: the step its training ends at, when known."""
    if failed:
        return "failed"
    if not rounds:
        return "not started"
    ended = last.get(ENDED)
    if ended == "stopped":
        # ASHA also stops a trial at max_t (the end it was given) and may stop one at its very
        # last round; neither ended early.
        reached_max_t = max_t is not None and len(rounds) >= max_t
        ran_all = full_steps is not None and (rounds[-1].step or 0) >= full_steps
        return "completed" if reached_max_t or ran_all else "stopped early"
    return "completed" if ended == "completed" else "interrupted"


def _full_steps(rounds: tuple[Round, ...], longest: int | None) -> int | None:
    """Where training ends: the run's own total_steps when it reports one, else the furthest step
    any trial of the sweep reached (trials share a schedule unless the schedule is searched)."""
    return next((r.report.total_steps for r in reversed(rounds) if r.report), longest)


def error_message(error: BaseException | None) -> str | None:
    """The user-facing message of a trial's error: the original exception inside Ray's wrapper."""
    if error is None:
        return None
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [x for x in str(error).splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def records_from_results(results: Iterable, metric: str, max_t: int | None,
                         locate: Callable[[str], str] = str) -> list[TrialRecord]:
    """One record per trial of a Ray Tune ResultGrid, in trial-id order."""
    raw = []
    for result in results:
        df = result.metrics_dataframe
        rows = df.to_dict("records") if df is not None else []
        last = dict(result.metrics or {})
        trial_id = last.get("trial_id") or PurePosixPath(str(result.path)).name.removeprefix("trial_")
        raw.append((str(trial_id), dict(result.config or {}), tuple(round_from_row(r, metric, locate) for r in rows), last,
                    result.error, sum(_finite(r.get("time_this_iter_s")) or 0.0 for r in rows)))
    longest = max((r.step for _, _, rounds, *_ in raw for r in rounds if r.step is not None), default=None)
    records = [
        TrialRecord(trial_id=tid, config=config, rounds=rounds, wall_s=wall, error=error_message(error),
                    outcome=outcome_of(last, rounds, error is not None, max_t, _full_steps(rounds, longest)))
        for tid, config, rounds, last, error, wall in raw
    ]
    return sorted(records, key=lambda r: r.trial_id)

"""Evaluation rounds, the unit of every scheduler's rungs, counted over a trial's whole Train run.

Tune counts a trial's results since its function last started (`training_iteration`). A zerotune
trial that restarts (a resumed sweep, or a trial the synchronous scheduler paused and continues)
runs its function again, and fit() continues the Train run from its latest checkpoint: Tune's count
would start again at 1 for what is really the run's fifth round, and a scheduler would judge it
against the others' first. So each result carries its round, computed from where training stands
(step, epoch), which a resumed run continues; Tune keeps a `training_iteration` the result already
has (Trainable.train: setdefault), so the schedulers' time_attr and the live view both read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune.integration.ray_train import TuneReportCallback


def eval_round(report: Mapping[str, Any], eval_every_steps: int | None) -> int:
    """The 1-based evaluation round a round report (RoundReport.to_ray()) belongs to.

    The loop (trainers/loop.py) evaluates every `eval_every_steps` steps and at the last step; or, without
    it, at each epoch's end (its report's epoch already counts the finished epoch) and at the last step
    or a divergence, both inside an epoch (there, epoch is the 0-based epoch under way)."""
    step = int(report["step"])
    if eval_every_steps:
        return max(1, math.ceil(step / eval_every_steps))
    epoch = int(report["epoch"])
    inside_epoch = step >= int(report["total_steps"]) or bool(report.get("diverged"))
    return max(1, epoch + 1 if inside_epoch else epoch)


class ReportRounds(TuneReportCallback):
    """TuneReportCallback whose results carry the run's evaluation round as `training_iteration`."""

    def __init__(self, eval_every_steps: int | None):
        super().__init__()
        self.eval_every_steps = eval_every_steps

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0])
        if "step" in first:
            first[TRAINING_ITERATION] = eval_round(first, self.eval_every_steps)
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)

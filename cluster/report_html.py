"""report.html for `zerotune tune` and `zerotune run`: the composition root fills in what only it
knows (the command line that serves the winner, the held-out scores, the command's log file) and
tuning.html_report renders the page."""

from __future__ import annotations

import shlex

from trainers.storage import Location
from tuning.html_report import HeldOut, sweep_page, write

from . import output
from .spec import ExperimentSpec


def serve_command(spec: ExperimentSpec, checkpoint: str) -> str:
    """The exact command that serves `checkpoint` with this command's spec file and overrides."""
    s = output.current()
    spec_file = s.spec_file if s and s.spec_file else f"{spec.name}.yaml"
    overrides = list(s.overrides) if s else []
    return shlex.join(["zerotune", "serve", spec_file, *overrides, "--checkpoint", checkpoint])


def write_sweep_report(spec: ExperimentSpec, sweep, held_out: HeldOut | None = None) -> Location:
    """report.html beside best.json for a finished sweep (a tuning.sweep.SweepResult)."""
    exp = Location.parse(sweep.path)
    s = output.current()
    log = Location.parse(str(s.log_path)) if s else None
    page = sweep_page(exp, sweep.best, sweep.trials, serve_command=serve_command(spec, sweep.best.checkpoint),
                      held_out=held_out, log_file=log)
    return write(exp, page)

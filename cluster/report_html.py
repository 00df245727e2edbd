"""report.html for `zerotune tune` and `zerotune run`: the composition root fills in what only it
knows (the command line that serves the winner, the held-out scores, the command's log file) and
tuning.html_report renders the page. A run without a `tune:` section gets the same page for its one
trained model (no trials table or trial plots; its curves are in TensorBoard)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from trainers.storage import Location
from tuning.html_report import HeldOut, Link, ReportPage, sweep_page, write

from . import output
from .spec import ExperimentSpec

if TYPE_CHECKING:  # trainers.launch imports the training loop's libraries
    from trainers.launch import FitResult


def serve_command(spec: ExperimentSpec, checkpoint: str) -> str:
    """The exact command that serves `checkpoint` with this command's spec file and overrides."""
    s = output.current()
    spec_file = s.spec_file if s and s.spec_file else f"{spec.name}.yaml"
    overrides = list(s.overrides) if s else []
    return shlex.join(["zerotune", "serve", spec_file, *overrides, "--checkpoint", checkpoint])


def _log_file() -> Location | None:
    s = output.current()
    return Location.parse(str(s.log_path)) if s else None


def write_sweep_report(spec: ExperimentSpec, sweep, held_out: HeldOut | None = None) -> Location:
    """report.html beside best.json for a finished sweep (a tuning.sweep.SweepResult)."""
    exp = Location.parse(sweep.path)
    page = sweep_page(exp, sweep.best, sweep.trials, serve_command=serve_command(spec, sweep.best.checkpoint),
                      held_out=held_out, log_file=_log_file())
    return write(exp, page)


def write_run_report(spec: ExperimentSpec, result: FitResult, checkpoint: str,
                     held_out: HeldOut | None = None) -> Location:
    """report.html in the run directory of a `zerotune run` without a sweep."""
    run = Location.parse(result.run_dir)
    metric, best, final = spec.train.resolved_metric, result.best or result.final, result.final
    value = best.value(metric) if best else None
    shown = f"{metric} {value:.4f}" if value is not None else f"no finite {metric}"
    why = ["The spec has no tune: section, so nothing was searched: this is its one configuration, trained once.",
           f"The checkpoint kept and served is the best evaluation round's, at step {best.step if best else '?'} "
           f"of {final.total_steps if final else '?'} ({shown}, by {'highest' if spec.train.resolved_mode == 'max' else 'lowest'} "
           f"{metric})."]
    tensorboard = run.join("tensorboard")
    links = [Link.to("the served checkpoint", run, checkpoint),
             Link.to("TensorBoard logs", run, str(tensorboard))]
    log = _log_file()
    if log is not None:
        links.append(Link.to("this command's log (library output)", run, str(log)))
    page = ReportPage(title=f"zerotune: {spec.name}", why=why, winner_values={},
                      validation=dict(best.eval) if best else {}, held_out=held_out, links=links,
                      commands=[("serve the model", serve_command(spec, checkpoint)),
                                ("watch the learning curves", f"tensorboard --logdir {tensorboard}")])
    return write(run, page)

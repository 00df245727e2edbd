"""One trial: the sampled values applied to `train:`, then the training loop.

The function runs as a Ray Tune trial; everything it needs arrives as plain JSON in its arguments
and is re-validated here. Its run name comes from the trial id, never a timestamp, so a restored
sweep continues each unfinished run from its latest checkpoint.

A one-worker trial runs the loop in this process (trainers/in_process.py), holding the worker's
CPUs (and GPU) itself: no Train controller or worker process to start, which was most of a trial's
fixed cost. A trial with several workers is a Train driver: `fit()` launches them.

Stopping a Train-driving trial early: Tune ends the trial's process, and with it the Train
controller that process owns, abruptly. Ray Train's safety net that would then free the workers' placement group
asks the State API, which needs the dashboard; without one, every trial ASHA stops keeps its
workers' CPUs reserved until the sweep ends, and a small cluster stalls. So when Tune stops a
trial, `AbortRunOnStop.cleanup` first asks the Train controller to abort (workers stopped,
placement group removed), the way Ray Train handles Ctrl-C.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.air.constants import TRAINING_ITERATION
from ray.train import UserCallback

from trainers.config import TrainSection

from .rounds import ReportRounds, eval_round
from .search_space import apply_values

# Ray needs a non-empty resource request for a Train-driving trial's own process. It asks for no
# CPU and no GPU so Train workers get every core; a little memory (the driver holds the data while
# fit() checks it) is what it does need.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 256 * 2**20}


def runs_in_trial(train: TrainSection) -> bool:
    """Whether the trial runs the loop itself (one worker) rather than through Ray Train."""
    return train.scaling.num_workers == 1


def trial_resources(train_json: dict[str, Any]):
    """Tune's resource request per trial (its sampled values may change scaling): the worker's own
    for a trial that runs the loop itself, else the Train driver's."""
    def resources(config: dict[str, Any]) -> dict[str, float]:
        train = apply_values(TrainSection.model_validate(train_json), config)
        if runs_in_trial(train):
            s = train.scaling
            return {"cpu": s.cpus_per_worker, "gpu": s.gpus_per_worker if s.use_gpu else 0}
        return TRIAL_DRIVER_RESOURCES

    return resources


_ABORT_TIMEOUT_S = 60.0


def run_name(trial_id: str) -> str:
    """The Train run name (and directory under <sweep>/runs/) for a trial."""
    return f"trial_{trial_id}"


def trial_dirname(trial) -> str:
    """Tune's directory and display name for a trial: its id, nothing that changes on restore."""
    return run_name(trial.trial_id)


@dataclass
class _RunLink:
    """This trial process's link to its Train run: the controller's handle arrives in `mailbox`."""

    mailbox: Any
    stopping: threading.Event = field(default_factory=threading.Event)
    finished: bool = False


# One trial per process (Tune does not reuse actors here). Module state because the Tune
# trainable (cleanup) and the trial function (its own thread) share nothing else.
_link: _RunLink | None = None


class SendControllerHandle(UserCallback):
    """Runs in the Train controller: sends the controller's actor handle to the trial once.
    Listed before TuneReportCallback, so the handle is on its way before Tune sees a result."""

    def __init__(self, mailbox):
        self._mailbox = mailbox
        self._sent = False

    def after_report(self, run_context, metrics, checkpoint):
        if not self._sent:
            self._mailbox.put(ray.get_runtime_context().current_actor)
            self._sent = True


def run_trial(config: dict[str, Any], *, train_json: dict[str, Any], runs_path: str,
              data_root: str | None = None) -> None:
    from ray import tune
    from ray.util.queue import Queue

    from trainers.in_process import fit_in_process
    from trainers.launch import fit

    global _link
    train = apply_values(TrainSection.model_validate(train_json), config)
    name = run_name(tune.get_context().get_trial_id())
    if runs_in_trial(train):
        every = train.schedule.eval_every_steps

        def to_tune(row: dict[str, Any]) -> None:  # what ReportRounds does for a Train run's rounds
            tune.report({**row, TRAINING_ITERATION: eval_round(row, every)})

        fit_in_process(train, storage_path=runs_path, name=name, data_root=data_root, on_report=to_tune)
        return
    _link = link = _RunLink(mailbox=Queue(maxsize=1, actor_options={"num_cpus": 0}))
    try:
        fit(train, storage_path=runs_path, name=name, data_root=data_root, verbose=False,  # the sweep speaks for it
            callbacks=[SendControllerHandle(link.mailbox), ReportRounds(train.schedule.eval_every_steps)])
    except Exception:
        if link.stopping.is_set():
            return  # the sweep stopped this trial and aborted its run on purpose
        raise
    finally:
        link.finished = True


class AbortRunOnStop:
    """Mixin for the trial's Tune trainable (see the module docstring)."""

    def cleanup(self):
        link = _link
        if link is not None and not link.finished:
            link.stopping.set()
            _abort(link)
        super().cleanup()


def _abort(link: _RunLink) -> None:
    from ray.exceptions import GetTimeoutError, RayActorError
    from ray.util.queue import Empty

    try:
        controller = link.mailbox.get(timeout=2)
    except Empty:
        # No report yet (only a time budget stops a trial this early): the process exit ends
        # the run, and its placement group lives until the sweep's job ends.
        return
    try:
        ray.get(controller.abort.remote(), timeout=_ABORT_TIMEOUT_S)
    except (RayActorError, GetTimeoutError):
        pass  # abort() ends the controller itself; a timeout leaves it to the process exit


run_trial.__mixins__ = (AbortRunOnStop,)  # Tune builds the trial's trainable class with these mixins

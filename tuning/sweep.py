"""`run_sweep`: Ray Tune over the one training path, early stopping, resume, and a named winner.

Layout under <storage>/<name>/:

    experiment_state-*.json, tuner.pkl, trial_<id>/   Ray Tune's experiment (what --resume reads)
    runs/trial_<id>/checkpoint_*                       each trial's Train run and its checkpoints
    prepared/<key>/                                    the tokenized data every trial reads (trainers/prepared.py)
    sweep_spec.json                                    the tune: and train: sections it started with
    best.json, trials.csv, trials.md, trials.png, learning_curves.png

The caller connects to Ray first (cluster/connect.py); this module never starts Ray.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.checkpoint import read_train
from trainers.config import TrainSection
from trainers.console import say, verbose
from trainers.errors import CheckpointError, UserError
from trainers.launch import resolve_storage
from trainers.prepared import prepare_data
from trainers.storage import Location
from trainers.tasks import get_task

from .budget import SweepBudget, SweepEstimate, nodes_in_use, time_budget_s
from .calibrate import total_steps
from .concurrency import plan_concurrency
from .config import Grid, TuneSection
from .progress import SweepProgress
from .records import TrialRecord, records_from_results
from .report import SweepWinner, sweep_winner, winner, write_report
from .schedulers import build_scheduler
from .search_space import apply_values, param_space, rounds_problem
from .trial import run_trial, runs_in_trial, trial_dirname, trial_resources

SPEC_FILE = "sweep_spec.json"
PREPARED_DIR = "prepared"
BEST_FILE = "best.json"
# Settings that a resumed sweep may change without changing what its trials mean.
_RESUME_MAY_CHANGE = ("time_budget_s", "budget", "max_concurrent_trials")


class SweepFailedError(UserError):
    """No trial produced a result to pick a winner from."""


class SweepExistsError(UserError):
    """A sweep of that name is already in storage and --resume was not given."""


@dataclass(frozen=True)
class SweepResult:
    path: str  # <storage>/<name>
    best: SweepWinner  # the content of best.json
    trials: list[dict[str, Any]]  # the rows of trials.csv, best first
    files: dict[str, str]  # report file name -> its path


def run_sweep(tune: TuneSection, train: TrainSection, *, storage_path: str, name: str,
              resume: bool = False, trials_by_memory: int | None = None) -> SweepResult:
    """Search `tune.search_space` over `train` on the connected Ray cluster; write and return the winner.

    `trials_by_memory`: how many trials the cluster's memory holds at once (cluster/plan.py), a cap
    on the concurrency the CPUs and GPUs allow.

    Rerun with resume=True after an interruption: finished trials are kept, unfinished ones
    continue from their latest checkpoint, and the ones not started yet run.
    """
    import ray

    metric, mode = tune.resolved_metric(train), tune.resolved_mode(train)
    task = get_task(train.model.task)
    for where, checked in (("tune.metric" if tune.metric else "train.metric", metric),
                           ("tune.scheduler.metric", tune.scheduler.metric)):
        problem = task.metric_problem(checked) if checked else None
        if problem:  # the spec's load-time check makes this rare: a spec built in code skips it
            raise UserError(f"{where}: {problem}")
    if tune.search_alg == "optuna":
        _require_optuna()
    root = resolve_storage(storage_path)
    exp = root.join(name)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    concurrency, note = plan_concurrency(train.scaling, tune.max_concurrent_trials, ray.cluster_resources(), nodes,
                                         by_memory=trials_by_memory)
    occupied = nodes_in_use(train.scaling, concurrency, nodes)
    budget = time_budget_s(tune, occupied)
    estimator = SweepEstimate(trials=num_trials(tune), concurrency=concurrency, global_batch=train.global_batch_size,
                              eval_every_steps=train.schedule.eval_every_steps, scheduler=tune.scheduler,
                              nodes=occupied, budget_s=budget)
    _refuse_existing(exp, name, resume)
    # Before Tune writes anything: a problem the data's size reveals still leaves no sweep behind.
    data_line, train_rows = _prepare_once(tune, train, exp.join(PREPARED_DIR))
    rounds_note = _check_rounds(tune, train, train_rows)
    tuner = _tuner(tune, train, root=root, name=name, resume=resume, concurrency=concurrency,
                   stopper=SweepBudget(budget) if budget else None, extra_callbacks=[estimator])
    if data_line:
        say(data_line)
    say(_plan_line(tune, train, metric, mode, concurrency, name, budget) + (f" ({note})" if note else ""))
    if rounds_note:
        say(rounds_note)
    # Tune reports checkpoint paths on the storage filesystem (no scheme): locate them under root.
    records = records_from_results(tuner.fit(), metric, tune.scheduler.max_t, locate=lambda p: str(root.at(p)))
    return _publish(records, tune, train, exp=exp, name=name)


def _tuner(tune: TuneSection, train: TrainSection, *, root: Location, name: str, resume: bool, concurrency: int,
           stopper=None, extra_callbacks: list | None = None):
    """A new Ray Tune Tuner for the sweep, or the interrupted one restored (resume)."""
    from ray import tune as rt

    exp = root.join(name)
    metric, mode = tune.resolved_metric(train), tune.resolved_mode(train)
    train_json = train.model_dump(mode="json")
    trainable = rt.with_resources(
        rt.with_parameters(run_trial, train_json=train_json, runs_path=str(exp.join("runs")),
                           data_root=str(exp.join(PREPARED_DIR))),
        trial_resources(train_json),
    )
    snapshot = {"tune": tune.model_dump(mode="json"), "train": train.model_dump(mode="json")}
    exp_path, fs = exp.for_ray()
    if rt.Tuner.can_restore(exp_path, storage_filesystem=fs):  # and resume: see _refuse_existing
        _check_same_spec(exp.join(SPEC_FILE).read_text_or_none(), snapshot, str(exp))
        say(f"resuming sweep {name} at {exp}: finished trials are kept, unfinished ones continue")
        return rt.Tuner.restore(exp_path, storage_filesystem=fs, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                restart_errored=False)
    if resume:
        say(f"nothing to resume at {exp}; starting sweep {name}")
    exp.join(SPEC_FILE).write_text(json.dumps(snapshot, indent=2))
    # The scheduler and the callback that keeps its state go into tuner.pkl together (tuning/schedulers.py).
    scheduler, keep_state, tune_concurrency = build_scheduler(tune.scheduler, trials=num_trials(tune),
                                                              concurrency=concurrency,
                                                              mode_of=get_task(train.model.task).mode_of)
    return rt.Tuner(
        trainable,
        param_space=param_space(tune),
        tune_config=rt.TuneConfig(
            metric=metric, mode=mode, num_samples=tune.num_samples, scheduler=scheduler,
            search_alg=_search_alg(tune), max_concurrent_trials=tune_concurrency,
            time_budget_s=tune.time_budget_s, reuse_actors=False, trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=rt.RunConfig(
            # Tune's own reporter only with -v; zerotune's live view (SweepProgress) either way.
            name=name, storage_path=root.for_ray()[0], storage_filesystem=fs, verbose=1 if verbose() else 0,
            stop=stopper,  # tune.budget (tuning/budget.py)
            # Worker failures are retried from the latest checkpoint: by Train inside a trial with
            # several workers, by Tune for a one-worker trial (it is the worker). A trial that fails
            # on bad data or a diverged loss fails at once again (fit's checks), cheaply.
            failure_config=rt.FailureConfig(max_failures=train.scaling.max_failures if runs_in_trial(train) else 0),
            callbacks=[SweepProgress(metric, mode), *(extra_callbacks or []), *keep_state],
        ),
    )


def _refuse_existing(exp: Location, name: str, resume: bool) -> None:
    from ray import tune as rt

    exp_path, fs = exp.for_ray()
    if not resume and rt.Tuner.can_restore(exp_path, storage_filesystem=fs):
        raise SweepExistsError(f"a sweep named {name!r} already exists at {exp}. Resume it with --resume, "
                               "or pick another name (or remove that directory) to start over.")


def _prepare_once(tune: TuneSection, train: TrainSection, root: Location) -> tuple[str | None, int | None]:
    """Read, check and tokenize the data once, before any trial starts; every trial (and a resumed
    sweep) finds it under `root` by its key. A space that searches data or model fields gives trials
    different data: each such trial prepares its own (keyed the same way, so equal ones share).
    Returns the line that says so, and the training rows (None: each trial prepares its own)."""
    if any(path.startswith(("data.", "model.")) for path in tune.search_space):
        return None, None
    _, data = prepare_data(train, root)
    rows = data.manifest.rows
    line = (f"data {'reused' if data.reused else 'prepared once for every trial'}: {rows['train']} train / "
            f"{rows['validation']} validation rows at {data.location}"
            + ("" if data.reused else f" ({data.manifest.seconds:.1f}s)"))
    return line, int(rows["train"])


def _check_rounds(tune: TuneSection, train: TrainSection, train_rows: int | None) -> str | None:
    """Trials that all end within the scheduler's grace period, now that the data's size tells their
    rounds (the spec alone told them only with max_steps; tuning/search_space.py checked that at load
    time): an error when the spec chose the scheduler, else a note (early stopping has nothing to do)."""
    if train_rows is None or any(p.startswith("schedule.") or p == "scaling.num_workers" for p in tune.search_space):
        return None
    steps = total_steps(train, train_rows)
    every = train.schedule.eval_every_steps
    if every:
        rounds, why = math.ceil(steps / every), f"{steps} steps at eval_every_steps {every}"
    else:
        one_epoch = total_steps(train.model_copy(update={"schedule": train.schedule.model_copy(
            update={"epochs": 1, "max_steps": None})}), train_rows)
        rounds, why = math.ceil(steps / one_epoch), f"{steps} steps, one round per epoch of {one_epoch}"
    if tune.scheduler.max_t is not None:
        rounds = min(rounds, tune.scheduler.max_t)
    problem = rounds_problem(tune.scheduler, rounds, f"{why} over {train_rows} training rows")
    if problem and "scheduler" in tune.model_fields_set:
        raise UserError(problem)
    return f"note: {problem}" if problem else None


def _publish(records: list[TrialRecord], tune: TuneSection, train: TrainSection, *, exp: Location,
             name: str) -> SweepResult:
    """The trials report and best.json, written beside the sweep; raises when nothing won."""
    metric, mode = tune.resolved_metric(train), tune.resolved_mode(train)
    best = winner(records, mode)
    with tempfile.TemporaryDirectory(prefix="zerotune-sweep-") as tmp:
        out = Path(tmp)
        rows = write_report(records, out, sweep=name, metric=metric, mode=mode, paths=list(tune.search_space))
        doc = None
        if best is not None:
            doc = sweep_winner(best, sweep=name, metric=metric, mode=mode, train=_trained_spec(best, train, mode))
            (out / BEST_FILE).write_text(doc.model_dump_json(indent=2) + "\n")
        files = {rel: str(loc) for rel, loc in exp.upload(out).items()}
    if doc is None:
        raise SweepFailedError(_why_no_winner(records, metric, files.get("trials.md", str(exp))))
    say(f"winner: trial {best.trial_id} with {metric} {doc.value:.4f} ({_values(best.config)}); "
        f"checkpoint {doc.checkpoint}; report {files['trials.md']}")
    return SweepResult(path=str(exp), best=doc, trials=rows, files=files)


def read_winner(path: str | Location) -> SweepWinner | None:
    """best.json of the sweep at `path` (<storage>/<name>), or None when there is none."""
    text = Location.parse(path).join(BEST_FILE).read_text_or_none()
    return SweepWinner.model_validate_json(text) if text is not None else None


def _search_alg(tune: TuneSection):
    if tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    return None  # Tune's default: random sampling and grids


def _require_optuna() -> None:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UserError("tune.search_alg is 'optuna' but optuna is not installed on this driver. "
                        "Install it (pip install optuna), or set tune.search_alg: random.")


def num_trials(tune: TuneSection) -> int:
    """Trials a sweep starts: every grid point, num_samples times (random samples: num_samples)."""
    grid = math.prod(len(d.values) for d in tune.search_space.values() if isinstance(d, Grid))
    return grid * tune.num_samples


def _plan_line(tune: TuneSection, train: TrainSection, metric: str, mode: str, concurrency: int, name: str,
               budget_s: float | None = None) -> str:
    sched = tune.scheduler.label
    budget = f", tune.budget {budget_s:.0f}s of wall time from the first round" if budget_s else ""
    if tune.time_budget_s:
        budget += f", time_budget_s {tune.time_budget_s:g}s from now"
    return (f"sweep {name}: {num_trials(tune)} trial(s), {mode} {metric}, {sched}, {tune.search_alg} search, "
            f"up to {concurrency} at once ({train.scaling.num_workers} worker(s) each{budget})")


def _check_same_spec(saved: str | None, current: dict[str, Any], exp: str) -> None:
    if saved is None:
        return
    before = json.loads(saved)
    for key in _RESUME_MAY_CHANGE:
        before.get("tune", {}).pop(key, None)
    now = json.loads(json.dumps(current))
    for key in _RESUME_MAY_CHANGE:
        now["tune"].pop(key, None)
    changed = _diff(before, now)
    if changed:
        shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise UserError(f"the spec changed since sweep {exp} started ({shown}); a resumed sweep must keep it. "
                        "Restore those values, or start a new sweep under another name.")


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def _trained_spec(record: TrialRecord, train: TrainSection, mode: str) -> TrainSection:
    """The winner's resolved spec: as its checkpoint recorded it, else rebuilt from its values."""
    ckpt = record.best_round(mode).checkpoint
    if ckpt:
        try:
            return read_train(ckpt)
        except (OSError, CheckpointError):
            pass
    return apply_values(train, record.config)


def _why_no_winner(records: list[TrialRecord], metric: str, report: str) -> str:
    failed = [r for r in records if r.outcome == "failed"]
    if not records:
        return "the sweep ran no trials"
    if failed and len(failed) == len(records):
        first = failed[0]
        return (f"all {len(records)} trials failed; the first ({first.trial_id}, {_values(first.config)}) with: "
                f"{first.error}. Every trial's error is in {report}.")
    outcomes = ", ".join(f"{n} {o}" for o, n in Counter(r.outcome for r in records).items())
    head = f"no trial reported a finite {metric} ({outcomes})"
    if failed:
        head += f"; the first failure ({failed[0].trial_id}): {failed[0].error}"
    return head + f". See {report}."


def _values(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "base spec"

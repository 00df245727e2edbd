"""`zerotune run`: tune (or train) -> winner -> serve -> held-out check, on one cluster.

The composition root's job: each stage is a call into its package; this module only orders
them, reports progress, and writes one summary beside the run's other files.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainers.checkpoint import read_manifest, read_train
from trainers.console import say
from trainers.tasks import get_task

from .connect import connect
from .plan import launch_check
from .spec import ExperimentSpec

SUMMARY_FILE = "summary.json"


class RunSummary(BaseModel):
    """summary.json: what `zerotune run` did and found."""

    model_config = ConfigDict(extra="forbid")

    name: str
    run_dir: str
    checkpoint: str
    winner_values: dict[str, Any] = Field(description="The winner's sampled values by dotted path (empty: no sweep).")
    validation_metrics: dict[str, float]
    test_rows: int = 0
    test_metrics: dict[str, float] = Field(default_factory=dict)
    baseline_metrics: dict[str, float] = Field(default_factory=dict)
    url: str | None = None
    example: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    report: str | None = Field(default=None, description="report.html: winner, trials, plots, held-out scores.")
    tensorboard: str | None = Field(default=None, description="zerotune's TensorBoard files: <sweep>/runs (one "
                                    "run per trial) or <run>/tensorboard.")


def _stage(n: int, total: int, what: str) -> None:
    say(f"stage {n}/{total}: {what}")


def run_job(spec: ExperimentSpec, *, resume: bool = False) -> RunSummary:
    from trainers.launch import fit, resolve_storage
    from trainers.storage import Location

    plan = launch_check(spec)  # a job no node can hold stops here with the plan's table, before Ray starts
    storage = resolve_storage(spec.cluster.storage_path)
    total = 3 if spec.serve else 1
    say(str(connect(spec.cluster)))

    started = time.time()
    if spec.tune:
        from tuning.sweep import run_sweep

        _stage(1, total, "tune: search, stop weak trials early, pick the winner")
        sweep = run_sweep(spec.tune, spec.train, storage_path=storage, name=spec.name, resume=resume,
                          trials_by_memory=plan.trials_by_memory)
        checkpoint, values, report = sweep.best.checkpoint, dict(sweep.best.config), sweep.best.metrics
        run_dir = sweep.path
    else:
        _stage(1, total, "train")
        result = fit(spec.train, storage_path=storage, name=spec.name)
        checkpoint, values, report = result.best_checkpoint or result.latest_checkpoint, {}, result.best or result.final
        run_dir = result.run_dir
    validation = dict(report.eval) if report else {}
    summary = RunSummary(name=spec.name, run_dir=run_dir, checkpoint=checkpoint, winner_values=values,
                         validation_metrics=validation, seconds={"train": time.time() - started},
                         tensorboard=str(Location.parse(run_dir).join("runs" if spec.tune else "tensorboard")))

    if spec.serve:
        from serving.app import start
        from serving.client import example_request

        _stage(2, total, "serve the winner")
        started = time.time()
        summary.url = start(checkpoint, spec.serve)
        summary.example = example_request(summary.url, read_manifest(checkpoint).task, spec.serve)
        summary.seconds["serve"] = time.time() - started

        _stage(3, total, "held-out test: the served model through HTTP, beside a TF-IDF baseline")
        started = time.time()
        _held_out(summary, spec)
        summary.seconds["test"] = time.time() - started

    from tuning.html_report import HeldOut

    from .report_html import write_run_report, write_sweep_report

    held = (HeldOut(rows=summary.test_rows, model=summary.test_metrics, baseline=summary.baseline_metrics,
                    url=summary.url) if summary.test_metrics else None)
    summary.report = str(write_sweep_report(spec, sweep, held_out=held) if spec.tune
                         else write_run_report(spec, result, checkpoint, held_out=held))
    Location.parse(run_dir).join(SUMMARY_FILE).write_text(summary.model_dump_json(indent=2))
    return summary


def _held_out(summary: RunSummary, spec: ExperimentSpec) -> None:
    """Score the held-out split through the real endpoint (classification only)."""
    from serving.client import classify
    from serving.guard import read_token
    from trainers.baseline import held_out, score, tfidf_baseline
    from trainers.data import load_splits

    train = read_train(summary.checkpoint)  # the winner's own spec: its data and labels
    task = get_task(train.model.task)
    if not task.held_out_baseline:
        say(f"held-out scoring through HTTP is not defined for {task.name}")
        return
    splits = load_splits(train.data, task, train.model.labels)  # read once, for both scores
    held = held_out(train, splits)
    predicted = classify(summary.url, held.texts, token=read_token(spec.serve))
    summary.test_rows = len(held.texts)
    summary.test_metrics = score(held.gold, [held.labels.index(p) for p in predicted], len(held.labels))
    summary.baseline_metrics = tfidf_baseline(train, splits)


def format_summary(s: RunSummary) -> str:
    values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.winner_values.items())
    shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in s.validation_metrics.items()
                      if k in ("eval_accuracy", "eval_macro_f1", "eval_f1", "eval_loss", "eval_perplexity"))
    lines = [f"\n=== zerotune run: {s.name} ===",
             f"winner:        {values or 'the trained model'} (validation: {shown})",
             f"checkpoint:    {s.checkpoint}"]
    if s.test_metrics:
        lines += [f"held-out test: {s.test_rows} rows, the served model scored through {s.url}/v1/classify",
                  f"  {'':28}{'accuracy':>10}{'macro-F1':>10}",
                  f"  {'zerotune (served)':28}{s.test_metrics['accuracy']:>10.4f}{s.test_metrics['macro_f1']:>10.4f}",
                  f"  {'TF-IDF + logistic regression':28}{s.baseline_metrics['accuracy']:>10.4f}"
                  f"{s.baseline_metrics['macro_f1']:>10.4f}"]
    if s.url:
        lines += [f"endpoint:      {s.url}   (OpenAPI: {s.url}/docs)", f"try:           {s.example}"]
    lines += [f"run directory: {s.run_dir}"]
    if s.report:
        what = "winner, trials, plots, held-out scores" if s.winner_values else "the model, held-out scores"
        lines += [f"report:        {s.report}   ({what})"]
    if s.tensorboard:
        lines += [f"tensorboard:   tensorboard --logdir {s.tensorboard}"]
    lines += ["time:          " + ", ".join(f"{k} {v:.0f}s" for k, v in s.seconds.items())]
    return "\n".join(lines)

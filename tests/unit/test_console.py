"""The console without Ray: where zerotune's lines go, the quiet session's routing of library
output to the log file, the live views (sweep table, training bar) and their plain-line forms."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import pytest

from trainers import console
from trainers.progress import TrainProgress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _fresh_console():
    console.detach()
    yield
    console.detach()


def test_lines_go_to_the_attached_terminal_and_the_log(tmp_path):
    term, log = io.StringIO(), io.StringIO()
    console.attach(terminal=term, log=log)
    console.say("hello")
    console.show("a table\n")
    assert term.getvalue() == "[zerotune] hello\na table\n"
    assert "[zerotune] hello" in log.getvalue() and "a table" in log.getvalue()
    console.log_line("only in the log")
    assert "only in the log" not in term.getvalue() and "only in the log" in log.getvalue()


def test_step_events_without_a_view_read_as_one_line():
    term = io.StringIO()
    console.attach(terminal=term)
    console.progress("step", run="r", step=5, total_steps=20, epoch=0, loss=0.69, lr=1e-3, samples_per_s=12.5,
                     eta_s=30)
    console.progress("eval", run="r", step=5, total_steps=20, metrics={"eval_accuracy": 0.5})
    lines = term.getvalue().splitlines()
    assert lines[0] == "[zerotune] step 5/20 (25%) epoch 0 loss 0.6900 lr 1.00e-03 12.5 samples/s eta 00:00:30"
    assert lines[1] == "[zerotune] eval at step 5/20: eval_accuracy 0.5000"


def test_a_worker_without_a_reachable_feed_prints_to_its_stdout(monkeypatch, capsys):
    monkeypatch.setenv(console.FEED_ENV, "zerotune-console-nothere")  # Ray is not running here
    console.say("from a worker")
    assert capsys.readouterr().out == "[zerotune] from a worker\n"


def test_train_progress_bar_on_a_terminal_and_lines_elsewhere():
    tty = _Tty()
    bar = TrainProgress(tty)
    console.attach(terminal=tty)
    console.set_view(bar)
    for step in (1, 10, 20):
        console.progress("step", run="r", step=step, total_steps=20, epoch=0, loss=0.5 / step, lr=2e-3,
                         samples_per_s=24.0, eta_s=10)
    console.progress("eval", run="r", step=20, total_steps=20, metrics={"eval_macro_f1": 0.75})
    bar.close()
    drawn = tty.getvalue()
    assert "20/20" in drawn and "loss 0.0250" in drawn and "24.0 samples/s" in drawn and "lr 2.00e-03" in drawn
    assert "\x1b[" in drawn  # drawn in place with terminal control codes
    assert "[zerotune] eval at step 20/20: eval_macro_f1 0.7500" in drawn

    plain = io.StringIO()
    console.set_view(TrainProgress(plain))
    console.attach(terminal=plain)
    console.set_view(TrainProgress(plain))
    console.progress("step", run="r", step=10, total_steps=20, epoch=0, loss=0.1, lr=2e-3, samples_per_s=24.0)
    assert plain.getvalue() == "[zerotune] step 10/20 (50%) epoch 0 loss 0.1000 lr 2.00e-03 24.0 samples/s\n"


def test_sweep_state_counts_best_eta_and_table():
    import time

    from rich.console import Console

    from tuning.progress import SweepState

    state = SweepState("eval_macro_f1", "max", started=time.monotonic() - 100)
    state.planned = 4
    a, b, c = (state.trial(t, {"optim.lr": lr}) for t, lr in (("x_00000", 1e-3), ("x_00001", 1e-2), ("x_00002", 5e-2)))
    a.status, b.status, c.status = "completed", "stopped early", "running"
    a.step = a.total_steps = 20
    b.step, b.total_steps = 10, 20
    a.best, state.best = 0.8, (0.8, "x_00000")
    state.steps_seen = 30
    state.on_step("x_00002", {"step": 10, "total_steps": 20, "samples_per_s": 33.0})
    assert state.counts() == {"completed": 1, "stopped early": 1, "running": 1, "pending": 1}
    # 10 steps left on the running trial + 20 for the one not started, at 40 steps per 100 s
    assert state.eta_s() == pytest.approx(75, rel=0.05)
    head = state.headline()
    assert head.startswith("sweep: 4 trials: 1 running, 1 pending, 1 completed, 1 stopped early")
    assert "best eval_macro_f1 0.8000 (trial 00000)" in head and "ETA 1m1" in head
    assert state.running_line() == "00002 step 10/20, 33.0 samples/s"
    out = io.StringIO()
    Console(file=out, width=140, force_terminal=False).print(state.table())
    text = out.getvalue()
    assert "00002" in text and "10/20" in text and "33.0" in text and "0.8000 *" in text


def test_quiet_session_sends_library_output_to_the_log_file(tmp_path, monkeypatch):
    from cluster import connect
    from cluster.output import session
    from cluster.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate({
        "name": "quiet", "cluster": {"storage_path": str(tmp_path / "results")},
        "train": {"model": {"name_or_path": "m", "task": "sequence-classification"}, "data": {"train": "d.csv"}},
    })
    term, errs = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", errs)
    bound_before = logging.StreamHandler(sys.stderr)  # a library handler made before the session
    lib = logging.getLogger("some.library")
    lib.addHandler(bound_before)
    lib.propagate = False
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    try:
        with session(spec, "train", verbose=False) as s:
            print("a library's print")
            lib.warning("a library warning")
            logging.getLogger("another.library").info("a propagated info line")
            warnings.warn("a deprecation", FutureWarning, stacklevel=1)
            console.say("zerotune's own line")
            console.error("zerotune train: error: a user error")
            env = dict(connect._console_env)
    finally:
        lib.removeHandler(bound_before)
        logging.captureWarnings(False)
    assert s.log_path.parent == tmp_path / "results" / "quiet" / "logs"
    log = s.log_path.read_text()
    shown = term.getvalue()
    assert shown.splitlines()[0] == f"[zerotune] log: {s.log_path} (Ray, DeepSpeed and transformers output; -v shows it here)"
    assert "[zerotune] zerotune's own line" in shown
    for library in ("a library's print", "a library warning", "a propagated info line", "a deprecation"):
        assert library not in shown and library not in errs.getvalue(), library
        assert library in log, library
    assert errs.getvalue() == "zerotune train: error: a user error\n"  # errors still show
    assert "zerotune's own line" in log and "a user error" in log
    assert env[console.VERBOSE_ENV] == "0" and env[console.FEED_ENV].startswith("zerotune-console-")
    assert sys.stdout is term and sys.stderr is errs  # restored: a traceback reaches the terminal


def test_verbose_session_leaves_library_output_on_the_terminal(tmp_path, monkeypatch):
    from cluster.output import session
    from cluster.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate({
        "name": "loud", "cluster": {"storage_path": str(tmp_path)},
        "train": {"model": {"name_or_path": "m", "task": "sequence-classification"}, "data": {"train": "d.csv"}},
    })
    term = io.StringIO()
    monkeypatch.setattr(sys, "stdout", term)
    with session(spec, "tune", verbose=True):
        print("a library's print")
        assert console.verbose()
    assert "a library's print" in term.getvalue()
    assert not console.verbose()


def test_sweep_view_redraws_in_place_on_a_terminal_and_prints_periodic_lines_elsewhere():
    from tuning.progress import SweepState, SweepView
    from tuning.trial import run_name

    def feed(view, state):
        state.planned = 2
        state.trial("x_00000", {"optim.lr": 2e-3}).status = "running"
        view.on_progress({"kind": "step", "run": run_name("x_00000"), "step": 5, "total_steps": 20,
                          "samples_per_s": 12.5, "pid": 4242})
        # a worker's own line, from the same process: labelled with its trial where several train at once
        console.dispatch([{"kind": "line", "text": "[zerotune] epoch 0 starts", "pid": 4242}])

    tty = _Tty()
    console.attach(terminal=tty)
    state = SweepState("eval_macro_f1", "max")
    view = SweepView(state, tty, live=True, every_s=30)
    console.set_view(view)
    feed(view, state)
    view.close()
    drawn = tty.getvalue()
    assert "\x1b[" in drawn  # rich redraws the table in place
    assert "sweep: 2 trials: 1 running, 1 pending" in drawn and "5/20" in drawn and "12.5" in drawn
    assert "[zerotune] trial 00000: epoch 0 starts" in drawn

    plain = io.StringIO()
    console.attach(terminal=plain)
    state = SweepState("eval_macro_f1", "max")
    view = SweepView(state, plain, live=False, every_s=3600)
    console.set_view(view)
    feed(view, state)
    assert plain.getvalue() == "[zerotune] trial 00000: epoch 0 starts\n"  # no status line before every_s
    view.tick(force=True)
    assert "\x1b[" not in plain.getvalue()
    assert plain.getvalue().splitlines()[-1].startswith(
        "[zerotune] sweep: 2 trials: 1 running, 1 pending; ETA ") and "; 00000 step 5/20, 12.5 samples/s" in plain.getvalue()


def test_a_diverged_trial_is_said_once_as_a_failure_whether_the_scheduler_or_its_error_ends_it():
    from types import SimpleNamespace

    from tuning.progress import SweepProgress
    from tuning.records import ENDED

    term = io.StringIO()
    console.attach(terminal=term)
    sweep = SweepProgress("eval_macro_f1", "max", stream=term, live=False)
    sweep.setup()
    blown = {"diverged": 1, "train_loss": float("nan"), "step": 1, "eval_macro_f1": float("-inf"),
             "training_iteration": 1}
    # Tune's trial, as far as the callback reads it
    stopped, raised = (SimpleNamespace(trial_id=t, config={"optim.lr": 0.05}, last_result={}, error_file=None,
                                       has_reported_at_least_once=True) for t in ("x_00000", "x_00001"))
    sweep.on_trial_start(0, [], stopped)
    sweep.on_trial_result(0, [], stopped, {**blown, "done": True})  # ASHA stops it on this round's -inf
    stopped.last_result = {**blown, "done": True, ENDED: "stopped"}
    sweep.on_trial_complete(0, [], stopped)
    sweep.on_trial_result(0, [], raised, dict(blown))  # here fit()'s TrainingDivergedError ends it
    sweep.on_trial_error(0, [], raised)
    sweep.on_experiment_end([])
    lines = term.getvalue().splitlines()
    failed = [x for x in lines if " failed: " in x]
    assert [x.split(" failed: ")[0] for x in failed] == ["[zerotune] trial 00000", "[zerotune] trial 00001"], lines
    assert all("training diverged: the loss was nan at step 1. Lower train.optim.lr (now 0.05)" in x for x in failed)
    assert not any("stopped early" in x for x in lines), lines
    assert sweep.state.counts() == {"failed": 2}

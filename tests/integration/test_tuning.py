"""run_sweep on a real local Ray (2 CPUs): Tune trials that each run trainers.fit with one worker,
so two trials train side by side; tiny LoRA BERT on learnable synthetic sentiment.

Covers ASHA early stopping, the winner (best.json) against the table and its checkpoint, an
absurd learning rate ranked last, a sweep whose driver is killed and then resumed without
rerunning finished trials, and a sweep in which every trial fails on bad data.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import make_model, sentiment_rows, write_csv
from trainers.checkpoint import MODEL_DIR, read_manifest
from trainers.config import TrainSection
from tuning.config import TuneSection
from tuning.report import SweepWinner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ABSURD_LR = 10.0


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune-data")
    return make_model(tmp / "model", "sequence-classification", "bert"), write_csv(tmp / "cls.csv", sentiment_rows(480))


def _train(tiny_data, *, steps: int = 50, **extra) -> TrainSection:
    model, data = tiny_data
    doc = {
        "model": {"name_or_path": model, "task": "sequence-classification"},
        "lora": {"enabled": True, "r": 4},
        "data": {"train": data, "validation_fraction": 0.2, "max_length": 24},
        "optim": {"lr": 5e-2},
        "schedule": {"epochs": 100, "max_steps": steps, "micro_batch_size": 16, "eval_every_steps": 10,
                     "log_every_steps": 50},
        "deepspeed": {"zero_stage": 0},
        "scaling": {"num_workers": 1, "max_failures": 0},
    }
    for path, value in extra.items():
        section, key = path.split("__")
        doc[section][key] = value
    return TrainSection.model_validate(doc)


def _train_workers() -> int:
    """Ray Train worker actors this Ray has started so far (dead ones included)."""
    from ray.util.state import list_actors

    return len(list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000))


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_asha_sweep_names_a_winner_and_ranks_an_absurd_lr_last(ray_cluster, tiny_data, tmp_path):
    from tuning.sweep import run_sweep

    tune = TuneSection.model_validate({
        "search_space": {"optim.lr": {"type": "grid", "values": [1e-1, ABSURD_LR]},
                         "lora.r": {"type": "grid", "values": [2, 8]}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    })
    train_workers = _train_workers()
    result = run_sweep(tune, _train(tiny_data), storage_path=str(tmp_path / "results"), name="asha")
    exp = Path(result.path)
    # One-worker trials train in the trial's own process (trainers/in_process.py): no Train worker started.
    assert _train_workers() == train_workers
    rows = _read_csv(result.files["trials.csv"])
    metric = "eval_macro_f1"
    assert result.best.metric == metric and result.best.mode == "max"
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4

    # ASHA stopped at least one trial before its training ended; finished ones ran every round.
    early = [r for r in rows if r["stopped_early"] == "True"]
    assert early, rows
    assert all(int(r["rounds"]) < 5 for r in early)
    assert all(int(r["rounds"]) == 5 for r in rows if r["status"] == "completed")

    # best.json is the table's first row, and its checkpoint is that trial's best round.
    best = SweepWinner.model_validate_json((exp / "best.json").read_text())
    assert best == result.best
    top = rows[0]
    assert best.trial_id == top["trial_id"]
    assert best.value == pytest.approx(float(top[f"best_{metric}"]))
    assert best.value == pytest.approx(max(float(r[f"best_{metric}"]) for r in rows if r[f"best_{metric}"]))
    assert best.value > 0.7, rows  # the task is learnable; the winner learned it
    assert best.metrics.value(metric) == pytest.approx(best.value)
    assert best.checkpoint == top["checkpoint"]
    ckpt = Path(best.checkpoint)
    assert ckpt.parent == exp / "runs" / f"trial_{best.trial_id}"

    # The winner's LoRA rank is the one its checkpoint holds.
    rank = best.train.lora.r
    assert rank == best.config["lora.r"] == int(float(top["lora.r"]))
    adapter = json.loads((ckpt / MODEL_DIR / "adapter_config.json").read_text())
    assert adapter["r"] == rank
    assert read_manifest(ckpt).lora_r == rank
    assert read_manifest(ckpt).metrics[metric] == pytest.approx(best.value)

    # Every trial reports its trainable parameters, and they grow with the LoRA rank.
    params = {int(float(r["lora.r"])): int(r["trainable_params"]) for r in rows}
    assert 0 < params[2] < params[8]

    # The absurd learning rate ranks below every trial that trained to the end. (A good rate that ASHA
    # stopped after a round or two may score at the majority-class floor too, so it can rank anywhere.)
    absurd = [i for i, r in enumerate(rows) if float(r["optim.lr"]) == ABSURD_LR]
    finished = [i for i, r in enumerate(rows) if r["status"] == "completed" and float(r["optim.lr"]) != ABSURD_LR]
    assert absurd and finished and max(finished) < min(absurd), rows

    for name in ("trials.md", "trials.png", "learning_curves.png"):
        assert (exp / name).stat().st_size > 0
    assert (exp / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (exp / "trials.md").read_text()
    assert f"{params[8]:,}" in md and "| yes |" in md  # parameters readable; early stops marked


_DRIVER = """
import json, sys
from cluster.config import ClusterSection
from cluster.connect import connect
from trainers.config import TrainSection
from tuning.config import TuneSection
from tuning.report import SweepWinner
from tuning.sweep import run_sweep

doc = json.loads(open(sys.argv[1]).read())
connect(ClusterSection(address=doc["address"]))
run_sweep(TuneSection.model_validate(doc["tune"]), TrainSection.model_validate(doc["train"]),
          storage_path=doc["storage"], name=doc["name"])
"""


def _statuses(exp: Path) -> dict[str, str]:
    """Trial statuses as the sweep's driver last saved them (what a resume starts from)."""
    import logging

    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level, quiet.level = quiet.level, logging.ERROR  # trials without results yet are expected here
    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}
    except Exception:  # the state file is not written yet, or is being replaced
        return {}
    finally:
        quiet.setLevel(level)


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in run_dir.glob("checkpoint_*/zerotune.json"))


def _files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def _kill_driver_when(ready, ray_cluster, tmp_path, tune, train, storage, name) -> tuple[dict[str, str], int | None]:
    """Run the sweep in a driver process, poll its trials' saved statuses until `ready(statuses)`
    (or 300 s, or the driver ends), then SIGKILL the driver. Returns the last statuses and the
    driver's own exit code (None when it was killed)."""
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"address": ray_cluster.address, "storage": str(storage), "name": name,
                                "tune": tune.model_dump(mode="json"), "train": train.model_dump(mode="json")}))
    # Tune saves its experiment state every 10 s or more; every second here, so the statuses
    # polled below are what a resume will find.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(spec)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    statuses: dict[str, str] = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and not ready(statuses):
            time.sleep(0.5)
            statuses = _statuses(storage / name)
        exit_code = driver.poll()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    return statuses, exit_code


def test_killed_driver_resumes_without_rerunning_finished_trials(ray_cluster, tiny_data, tmp_path):
    from tuning.sweep import SweepExistsError, run_sweep

    # Short and long trials side by side (Tune varies max_steps fastest here): when a short one
    # has finished, a long one is mid-way.
    tune = TuneSection.model_validate({
        "search_space": {"schedule.max_steps": {"type": "grid", "values": [10, 60]},
                         "schedule.warmup_ratio": {"type": "grid", "values": [0.0, 0.1]}},
        "scheduler": {"type": "none"},
    })
    train = _train(tiny_data)
    storage, name = tmp_path / "results", "resumable"
    exp = storage / name

    midway: dict[str, list[str]] = {}  # trial -> its checkpoints, as last polled before the kill

    def finished_and_midway(statuses: dict[str, str]) -> bool:
        # Two checkpoints on disk: the older one is surely registered with Train.
        # (Tune saves a running trial as PENDING: that is how a resume will treat it.)
        midway.clear()
        midway.update({t: c for t, s in statuses.items() if s in ("PENDING", "RUNNING")
                       and len(c := _checkpoints(exp / "runs" / f"trial_{t}")) >= 2 and "checkpoint_000060" not in c})
        return bool(midway) and "TERMINATED" in statuses.values()

    statuses, exit_code = _kill_driver_when(finished_and_midway, ray_cluster, tmp_path, tune, train, storage, name)
    finished = {t for t, s in statuses.items() if s == "TERMINATED"}
    assert finished and midway, f"no finished and mid-way trials to kill at (driver exit {exit_code})"
    before = {t: _files(exp / "runs" / f"trial_{t}") for t in finished}
    results_before = {t: (exp / f"trial_{t}" / "result.json").read_text() for t in finished}

    with pytest.raises(SweepExistsError, match="--resume"):
        run_sweep(tune, train, storage_path=str(storage), name=name)
    result = run_sweep(tune, train, storage_path=str(storage), name=name, resume=True)

    rows = result.trials
    ids = {r["trial_id"] for r in rows}
    assert len(rows) == 4 and finished <= ids and set(midway) <= ids
    assert all(r["status"] == "completed" for r in rows), rows
    assert sorted(p.name for p in (exp / "runs").iterdir()) == sorted(f"trial_{t}" for t in ids)
    assert sorted((r["schedule.max_steps"], r["schedule.warmup_ratio"]) for r in rows) == [
        (10, 0.0), (10, 0.1), (60, 0.0), (60, 0.1)]
    for t in finished:  # not run again: its Train run and its Tune results are untouched
        assert _files(exp / "runs" / f"trial_{t}") == before[t]
        assert (exp / f"trial_{t}" / "result.json").read_text() == results_before[t]
    for r in rows:  # every trial trained to its own end (Train always keeps the latest checkpoint)
        assert (exp / "runs" / f"trial_{r['trial_id']}" / f"checkpoint_{r['schedule.max_steps']:06d}").is_dir()
    # The sweep tokenized its data once, before its first trial; no trial and not the resume did again.
    builds = list((exp / "prepared").glob("*/builds/*.json"))
    assert len(builds) == 1, builds
    for t, seen in midway.items():  # the interrupted run continued from a checkpoint, not from step 0
        last = _checkpoints(exp / "runs" / f"trial_{t}")[-1]
        resumed = read_manifest(exp / "runs" / f"trial_{t}" / last).metrics["resumed_from_step"]
        assert resumed >= int(seen[0].split("_")[1]), (t, seen, resumed)


def test_every_trial_failing_on_bad_data_says_why_and_is_not_retried(ray_cluster, tiny_data, tmp_path):
    from tuning.sweep import SweepFailedError, run_sweep

    tune = TuneSection.model_validate({
        "search_space": {"data.text_column": {"type": "grid", "values": ["tweet", "body"]}},
        "scheduler": {"type": "none"},
    })
    with pytest.raises(SweepFailedError) as info:
        run_sweep(tune, _train(tiny_data), storage_path=str(tmp_path / "results"), name="bad")
    message = str(info.value)
    assert "all 2 trials failed" in message and "DataError" in message and "'tweet'" in message, message
    exp = tmp_path / "results" / "bad"
    errors = sorted(exp.glob("trial_*/error.txt"))
    assert len(errors) == 2
    for error in errors:  # one failure each: not retried
        assert error.read_text().count("Failure #") == 1
    rows = _read_csv(str(exp / "trials.csv"))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert not (exp / "best.json").exists()


def _rounds(exp: Path, trial_id: str) -> list[dict]:
    """Tune's record of a trial's results (result.json), in order."""
    text = (exp / f"trial_{trial_id}" / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_successive_halving_waits_at_each_rung_halves_and_names_the_winner(ray_cluster, tiny_data, tmp_path, capsys):
    from tuning.sweep import run_sweep

    good, weak = [1e-1, 5e-2], [1e-5, 3e-5]  # at round 1 (step 20): macro-F1 above 0.8, and 0.38
    tune = TuneSection.model_validate({
        # Written order, two at a time: the good ones run first and must wait for the weak ones at the rung.
        "search_space": {"optim.lr": {"type": "grid", "values": good + weak}},
        "trial_order": "grid",
        "scheduler": {"type": "successive_halving", "grace_period": 1, "reduction_factor": 2},
    })
    train = _train(tiny_data, steps=400, schedule__eval_every_steps=20)  # 20 rounds
    result = run_sweep(tune, train, storage_path=str(tmp_path / "results"), name="halving")
    out = capsys.readouterr().out
    exp = Path(result.path)
    rows = {float(r["optim.lr"]): r for r in result.trials}
    assert "synchronous successive halving (grace 1, reduction 2, max_t none)" in out, out

    # Rung 0 (round 1) stops the weak half; rung 1 (round 2) the second of the good ones; one trains to its end.
    assert all(rows[lr]["status"] == "stopped early" for lr in weak), rows
    assert sorted(rows[lr]["status"] for lr in good) == ["completed", "stopped early"], rows
    best = result.best
    assert best.config["optim.lr"] in good and best.value > 0.7, best
    [finisher] = [rows[lr]["trial_id"] for lr in good if rows[lr]["status"] == "completed"]
    assert (exp / "runs" / f"trial_{finisher}" / "checkpoint_000400").is_dir()

    # The good trials ran first, reached the rung before the weak ones had started, and waited paused:
    # each continued its Train run from a checkpoint after the weak ones' first round.
    assert "paused after round" in out and "resumed after round" in out, out
    weak_first = max(_rounds(exp, rows[lr]["trial_id"])[0]["timestamp"] for lr in weak)
    for lr in good:
        trial_id = rows[lr]["trial_id"]
        run = exp / "runs" / f"trial_{trial_id}"
        assert read_manifest(run / _checkpoints(run)[-1]).metrics["resumed_from_step"] >= 20, lr
        resumed = [r for r in _rounds(exp, trial_id) if r["resumed_from_step"] >= 20]
        assert resumed and resumed[0]["timestamp"] >= weak_first
    for lr in weak:  # halved out: never resumed
        run = exp / "runs" / f"trial_{rows[lr]['trial_id']}"
        assert read_manifest(run / _checkpoints(run)[-1]).metrics["resumed_from_step"] == -1
    # Rounds count over the whole run, across the restart (Tune's own count would start again at 1).
    rounds = [r["training_iteration"] for r in _rounds(exp, finisher)]
    assert rounds == sorted(rounds) and rounds[0] == 1 and rounds[-1] == 20, rounds


def test_resumed_asha_keeps_its_rungs_and_stops_a_weak_trial_at_the_first(ray_cluster, tiny_data, tmp_path, capsys):
    """Tune restores a sweep with a blank scheduler; zerotune puts ASHA's rungs back (tuning/schedulers.py).
    Two good trials finish, the driver is killed before the weak one reports, and the resumed sweep
    stops the weak one at the first rung by the cut-off the good ones set before the kill. (A blank
    ASHA would let it run to its end: every rung it reached would be empty.)"""
    from tuning.sweep import run_sweep

    good, weak = [5e-2, 1e-1], 1e-5
    tune = TuneSection.model_validate({
        "search_space": {"optim.lr": {"type": "grid", "values": [*good, weak]}},
        "trial_order": "grid", "max_concurrent_trials": 1,  # one after the other, the weak one last
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    })
    train = _train(tiny_data, steps=200, schedule__eval_every_steps=20)
    storage, name = tmp_path / "results", "asha-resume"
    statuses, exit_code = _kill_driver_when(lambda st: sum(s == "TERMINATED" for s in st.values()) >= 2,
                                            ray_cluster, tmp_path, tune, train, storage, name)
    finished = {t for t, s in statuses.items() if s == "TERMINATED"}
    assert len(finished) == 2, f"two finished trials to kill at, got {statuses} (driver exit {exit_code})"

    result = run_sweep(tune, train, storage_path=str(storage), name=name, resume=True)
    out = capsys.readouterr().out
    rows = {float(r["optim.lr"]): r for r in result.trials}
    assert rows[weak]["trial_id"] not in finished  # it had not ended when the driver died
    # The rungs came back with what the two good trials recorded there before the kill...
    line = next((x for x in out.splitlines() if "ASHA's rungs restored" in x), "")
    assert "of 2 trial(s)" in line, out
    # ...and the weak trial met their cut-off at its first round: stopped early, never past its first rungs.
    assert rows[weak]["status"] == "stopped early", rows
    assert int(rows[weak]["rounds"]) < 10 and float(rows[weak]["best_eval_macro_f1"]) < 0.5, rows[weak]
    assert all(rows[lr]["trial_id"] in finished for lr in good)
    assert result.best.config["optim.lr"] in good

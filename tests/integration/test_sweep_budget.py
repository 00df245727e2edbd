"""tune.budget on a real local Ray: a sweep far longer than its budget stops when the budget is spent,
counted from its first evaluation round, and keeps the best round so far.

The clock starts at the first round (tuning/budget.py), so how long the cluster takes to start the
trial (other modules' actors still leaving, a loaded machine) cannot spend the budget: the test
checks the time between the trial's own first and last rounds, which only the budget bounds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.tiny import make_model, sentiment_rows, write_csv
from trainers.config import TrainSection
from tuning.config import TuneSection

pytestmark = pytest.mark.integration

BUDGET_S = 12
# The stop reaches the trial within a round or two; a round of this tiny model takes about a second here.
STOP_SLACK_S = 20


def test_budget_stops_a_long_sweep_and_keeps_the_best_so_far(ray_cluster, tmp_path, capsys):
    from tuning.sweep import run_sweep

    train = TrainSection.model_validate({
        "model": {"name_or_path": make_model(tmp_path / "model", "sequence-classification", "bert"),
                  "task": "sequence-classification"},
        "lora": {"enabled": True, "r": 4},
        "data": {"train": write_csv(tmp_path / "cls.csv", sentiment_rows(120)), "validation_fraction": 0.2,
                 "max_length": 16},
        "optim": {"lr": 5e-2},
        # Hours of steps at this machine's speed: only the budget can end this trial.
        "schedule": {"epochs": 10_000, "max_steps": 1_000_000, "micro_batch_size": 8, "eval_every_steps": 4,
                     "log_every_steps": 1000},
        "deepspeed": {"zero_stage": 0},
        "scaling": {"num_workers": 1, "max_failures": 0, "keep_checkpoints": 1},
    })
    # One trial: every trial of the sweep has reported when the budget ends it, so each run is
    # aborted through its Train controller (tuning/trial.py) and frees its CPUs for later modules.
    tune = TuneSection.model_validate({"search_space": {"optim.lr": {"type": "grid", "values": [5e-2]}},
                                       "scheduler": {"type": "none"}, "budget": {"wall_time": f"{BUDGET_S}s"}})
    result = run_sweep(tune, train, storage_path=str(tmp_path / "results"), name="budget")
    out = capsys.readouterr().out

    assert f"tune.budget {BUDGET_S}s of wall time from the first round" in out
    stops = [line for line in out.splitlines() if "tune.budget spent:" in line]
    assert len(stops) == 1, out  # the stop reason: our stopper, not the trial's end or Tune's own limit
    with open(result.files["trials.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "interrupted", rows
    assert result.best.metrics.step < 1_000_000 and result.best.checkpoint  # a winner from the rounds so far

    # Tune's own record of the trial's rounds: the budget's time passed between the first and the last.
    trial_dir = next(Path(result.path).glob("trial_*"))
    rounds = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    span = rounds[-1]["time_total_s"] - rounds[0]["time_total_s"]
    assert len(rounds) >= 3 and BUDGET_S - 3 <= span <= BUDGET_S + STOP_SLACK_S, (len(rounds), span)
    # The calibration's step count (tuning/calibrate.py) is the loop's own: 96 train rows, batch 8, 10,000 epochs.
    from tuning.calibrate import total_steps

    assert rounds[0]["total_steps"] == total_steps(train, 96) == 10_000 * 12
    estimate = [line for line in out.splitlines() if "sweep estimate (measured" in line]
    assert estimate and "the sweep will be cut off" in estimate[0], out


def test_calibration_measures_the_smallest_and_largest_configuration(ray_cluster, tmp_path):
    """`zerotune plan --calibrate`: two short real runs, then the sweep's time and node-hours."""
    import yaml

    from cluster.loader import load_spec
    from cluster.plan import calibrate_spec
    from tuning.calibrate import STEPS

    spec_file = tmp_path / "calibrate.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "calibrate",
        "cluster": {"storage_path": str(tmp_path / "results")},
        "train": {
            "model": {"name_or_path": make_model(tmp_path / "model", "sequence-classification", "bert"),
                      "task": "sequence-classification"},
            "data": {"train": write_csv(tmp_path / "cls.csv", sentiment_rows(120)), "validation_fraction": 0.2,
                     "max_length": 16},
            "schedule": {"epochs": 3, "micro_batch_size": 4},
            "scaling": {"num_workers": 1},
        },
        "tune": {"search_space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                                  "schedule.micro_batch_size": {"type": "grid", "values": [4, 16]}},
                 "num_samples": 2, "scheduler": {"type": "none"}, "budget": {"wall_time": "2s"}},
    }))
    spec = load_spec(spec_file)
    lines = calibrate_spec(spec)
    text = "\n".join(lines)
    measured = [line for line in lines if line.startswith("calibration (")]
    assert len(measured) == 2, text  # the smallest and the largest configuration each ran
    assert "micro_batch_size=4" in measured[0] and "micro_batch_size=16" in measured[1]
    assert f"calibration ({STEPS} steps each)" in measured[0]
    estimate = lines[-1]
    # 4 trials (2 grid points x 2 samples), each at least its measured setup; 2 seconds cannot hold them.
    assert estimate.startswith("sweep estimate from the calibration: about ") and "node-hours" in estimate
    assert "budget 2s: the sweep will be cut off" in estimate
    runs = tmp_path / "results" / "calibrate" / "calibration"
    # Two real Train runs, each under a fresh name beside the sweep.
    assert len(list(runs.glob("smallest-*"))) == 1 and len(list(runs.glob("largest-*"))) == 1, list(runs.iterdir())

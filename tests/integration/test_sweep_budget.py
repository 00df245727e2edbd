"""tune.budget on a real local Ray: a sweep far longer than its budget stops at the budget, keeps the
best result so far, and printed its time/cost estimate from the first measured round."""

from __future__ import annotations

import csv
import time

import pytest

from tests.tiny import make_model, sentiment_rows, write_csv
from trainers.config import TrainSection
from tuning.config import TuneSection

pytestmark = pytest.mark.integration

BUDGET_S = 60  # trials start in about 20 s on 2 cores; a budget that ends before a round would leave no winner


def test_budget_stops_a_long_sweep_and_keeps_the_best_so_far(ray_cluster, tmp_path, capsys):
    from tuning.sweep import run_sweep

    train = TrainSection.model_validate({
        "model": {"name_or_path": make_model(tmp_path / "model", "sequence-classification", "bert"),
                  "task": "sequence-classification"},
        "lora": {"enabled": True, "r": 4},
        "data": {"train": write_csv(tmp_path / "cls.csv", sentiment_rows(240)), "validation_fraction": 0.2,
                 "max_length": 24},
        "optim": {"lr": 5e-2},
        # Hours of steps at this machine's speed: only the budget can end these trials.
        "schedule": {"epochs": 10_000, "max_steps": 1_000_000, "micro_batch_size": 16, "eval_every_steps": 10,
                     "log_every_steps": 1000},
        "deepspeed": {"zero_stage": 0},
        "scaling": {"num_workers": 1, "max_failures": 0, "keep_checkpoints": 1},
    })
    tune = TuneSection.model_validate({"search_space": {"optim.lr": {"type": "grid", "values": [5e-2, 1e-1]}},
                                       "scheduler": {"type": "none"}, "budget": {"wall_time": f"{BUDGET_S}s"}})
    started = time.time()
    result = run_sweep(tune, train, storage_path=str(tmp_path / "results"), name="budget")
    took = time.time() - started
    out = capsys.readouterr().out

    assert took < BUDGET_S + 60, took  # the budget, plus Ray's trial start and stop
    with open(result.files["trials.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] != "completed" for r in rows), rows
    assert result.best.metrics.step < 1_000_000 and result.best.checkpoint  # a winner from the rounds so far
    assert f"budget {BUDGET_S}s of wall time" in out
    estimate = [line for line in out.splitlines() if "sweep estimate (measured" in line]
    assert estimate and "the sweep will be cut off" in estimate[0], out

"""tune.budget and the sweep's time/cost estimate (tuning/budget.py). No Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.loader import load_spec
from trainers.config import ScalingSection
from tuning.budget import (
    SweepBudget,
    asha_work_fraction,
    estimate,
    nodes_in_use,
    sweep_estimate,
    time_budget_s,
)
from tuning.config import SchedulerSection

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def test_budget_reads_durations_and_node_hours():
    spec = load_spec(QUICKSTART, ["tune.budget.wall_time=1h30m", "tune.budget.node_hours=2"])
    assert spec.tune.budget.wall_seconds == 5400
    # 2 node-hours on 4 nodes buy 30 minutes; the smaller limit wins.
    assert time_budget_s(spec.tune, nodes=4) == 1800
    assert time_budget_s(spec.tune, nodes=1) == 5400
    # tune.time_budget_s stays Tune's own limit from the start; tune.budget is counted from the first round.
    assert time_budget_s(load_spec(QUICKSTART, ["tune.time_budget_s=600"]).tune, nodes=1) is None
    assert time_budget_s(load_spec(QUICKSTART).tune, nodes=1) is None


def test_budget_clock_starts_at_the_first_round_and_stays_stopped():
    import time

    budget = SweepBudget(60)
    assert not budget.stop_all()  # no round yet: start-up spends nothing, however long it takes
    budget.started = time.monotonic() - 3600  # as if the first round came an hour before
    assert not budget("t1", {})  # a result never stops a single trial; the clock already runs
    assert budget.started < time.monotonic() - 3599
    assert budget.stop_all() and budget.stop_all()  # once spent, every later pass stops every trial
    assert budget.spent_at_stop >= 3600
    fresh = SweepBudget(60)
    fresh("t1", {})
    assert not fresh.stop_all()  # the first round starts the clock now
    import pickle

    restored = pickle.loads(pickle.dumps(budget))  # a resumed sweep (Tuner.restore) starts its clock again
    assert restored.started is None and not restored.stop_all() and restored.seconds == 60


@pytest.mark.parametrize("bad", ["2 hours", "soon", "-5", "0"])
def test_a_budget_it_cannot_read_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="tune.budget"):
        load_spec(QUICKSTART, [f"tune.budget.wall_time={bad}"])
    with pytest.raises(ConfigError, match="tune.budget.node_hours"):
        load_spec(QUICKSTART, ["tune.budget.node_hours=0"])


def test_nodes_in_use_packs_trials_onto_nodes():
    two = ScalingSection(num_workers=2, cpus_per_worker=1)
    assert nodes_in_use(two, 1, [{"CPU": 2.0}]) == 1  # this machine
    assert nodes_in_use(two, 4, [{"CPU": 2.0}, {"CPU": 4.0}]) == 2  # 8 workers, 4 per node
    gpu = ScalingSection(num_workers=4, use_gpu=True, gpus_per_worker=1)
    assert nodes_in_use(gpu, 2, [{"CPU": 8.0}, {"CPU": 16.0, "GPU": 1.0}]) == 8  # one GPU per node


def test_asha_runs_a_fraction_of_the_full_sweep():
    none = SchedulerSection(type="none")
    assert asha_work_fraction(none, rounds=8, trials=16) == 1.0
    asha = SchedulerSection(grace_period=1, reduction_factor=2)
    # Rungs at 1, 2, 4, 8 rounds: every trial runs 1, half reach 2, a quarter 4, an eighth 8.
    assert asha_work_fraction(asha, rounds=8, trials=16) == pytest.approx((1 + 0.5 * 1 + 0.25 * 2 + 0.125 * 4) / 8)
    # The best trial always runs in full: with one trial, the whole schedule.
    assert asha_work_fraction(asha, rounds=8, trials=1) == 1.0
    # ASHA's max_t cuts every trial: 4 of 8 rounds at most.
    assert asha_work_fraction(SchedulerSection(max_t=4), rounds=8, trials=4) < 0.5
    assert asha_work_fraction(SchedulerSection(max_t=4), rounds=8, trials=1) == 0.5


def test_estimate_from_measured_throughput():
    # 4 trials of 120 steps x 32 samples at 16 samples/s = 240 s each, 2 at a time, no early stopping.
    e = estimate(trials=4, concurrency=2, total_steps=120, global_batch=32, samples_per_s=16.0, rounds=6,
                 scheduler=SchedulerSection(type="none"), nodes=1)
    assert (e.trial_s, e.wall_s, e.wall_max_s) == (240, 480, 480)
    assert e.node_hours == pytest.approx(480 / 3600)
    assert "budget 5m00s: the sweep will be cut off" in e.line(300, 1)
    assert "budget 10m00s: enough" in e.line(600, 1)
    asha = estimate(trials=4, concurrency=2, total_steps=120, global_batch=32, samples_per_s=16.0, rounds=6,
                    scheduler=SchedulerSection(), nodes=1)
    assert 240 <= asha.wall_s < e.wall_s  # ASHA stops some trials early; the longest still runs in full


def test_estimate_over_configurations_of_different_cost():
    # Two configurations, 100 s and 300 s per trial, 4 trials, 2 at a time, no early stopping.
    e = sweep_estimate(trial_times=[100.0, 300.0], trials=4, concurrency=2, rounds=5,
                       scheduler=SchedulerSection(type="none"), nodes=3)
    assert e.trial_s == 300  # the longest trial bounds the sweep from below
    assert e.wall_s == pytest.approx(4 * 200 / 2) and e.node_hours == pytest.approx(400 * 3 / 3600)


# --- the calibration's arithmetic (tuning/calibrate.py; the measured runs: tests/integration) --------


def test_calibration_picks_the_smallest_and_largest_configuration_by_compute():
    from tuning.calibrate import configs, total_steps

    spec = load_spec(QUICKSTART, [
        "tune.search_space={optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}, "
        "schedule.micro_batch_size: {type: grid, values: [8, 32]}, lora.enabled: {type: choice, values: [true, false]}}",
    ])
    found = configs(spec.tune, spec.train)
    assert len(found) == 2 * 2 * 2  # range ends x grid values x choices
    smallest, largest = min(found, key=lambda c: c.work), max(found, key=lambda c: c.work)
    assert "micro_batch_size=8" in smallest.label and "lora.enabled=True" in smallest.label
    assert "micro_batch_size=32" in largest.label and "lora.enabled=False" in largest.label
    # Full fine-tuning also computes weight gradients: more work per token than LoRA, never 3x as much.
    lora = next(c for c in found if c.label.endswith("micro_batch_size=8, lora.enabled=True"))
    full = next(c for c in found if c.label.endswith("micro_batch_size=8, lora.enabled=False"))
    assert lora.work < full.work < 1.5 * lora.work
    # The loop's count: ceil(rows / workers) per rank, ceil(/ micro batch) batches, // accumulation, x epochs.
    train = spec.train.model_copy(update={"schedule": spec.train.schedule.model_copy(
        update={"epochs": 3, "max_steps": None, "micro_batch_size": 8, "gradient_accumulation_steps": 2})})
    workers = train.scaling.num_workers
    assert total_steps(train, 100 * workers) == 3 * (math.ceil(100 / 8) // 2)


def test_step_time_interpolates_between_the_measured_points():
    from tuning.calibrate import Config, Measured, step_time

    def point(work, step_s):
        return Measured(config=Config(label=str(work), train=None, work=work), step_s=step_s, setup_s=10.0)

    small, large = point(100.0, 1.0), point(300.0, 2.0)
    assert step_time(100.0, small, large) == pytest.approx(1.0)
    assert step_time(200.0, small, large) == pytest.approx(1.5)
    assert step_time(300.0, small, large) == pytest.approx(2.0)
    same = point(100.0, 1.0)
    assert step_time(100.0, same, same) == pytest.approx(1.0)  # one configuration: its own rate
    noisy = point(300.0, 0.9)  # the larger one measured faster (noise): proportional, at the slower rate
    assert step_time(300.0, small, noisy) == pytest.approx(3.0)


def test_a_budget_that_ends_before_the_first_rung_is_said():
    from tuning.budget import first_stop_s, rung_budget_line

    asha, sync = SchedulerSection(grace_period=2), SchedulerSection(type="successive_halving", grace_period=1)
    common = dict(round_s=10.0, setup_s=20.0, trial_s=100.0)
    # ASHA, two trials at a time: the second to reach round 2 can stop, 10 s after the first round.
    assert first_stop_s(asha, trials=4, concurrency=2, **common) == pytest.approx(10.0)
    # One at a time: the first trial runs whole before a second one reaches the rung.
    assert first_stop_s(asha, trials=4, concurrency=1, **common) == pytest.approx(100 - 10 + 20 + 20)
    # Successive halving waits for every trial at the rung: the second wave's start-up and round.
    assert first_stop_s(sync, trials=4, concurrency=2, **common) == pytest.approx(20 + 10)
    assert first_stop_s(SchedulerSection(type="none"), trials=4, concurrency=2, **common) is None
    assert first_stop_s(asha, trials=1, concurrency=2, **common) is None  # one trial: nothing to compare
    line = rung_budget_line(25.0, 30.0, sync, 10.0)
    assert line.startswith("tune.budget 25s ends before the scheduler can stop any trial (about 30s from the first "
                           "round: grace_period 1 round(s) of about 10s every trial at the first rung)")
    assert "Raise tune.budget, lower tune.scheduler.grace_period" in line
    assert rung_budget_line(60.0, 30.0, sync, 10.0) is None and rung_budget_line(None, 30.0, sync, 10.0) is None


def test_successive_halving_runs_a_fraction_like_asha():
    sync = SchedulerSection(type="successive_halving", grace_period=1, reduction_factor=2)
    assert asha_work_fraction(sync, rounds=8, trials=16) == asha_work_fraction(SchedulerSection(), rounds=8, trials=16)

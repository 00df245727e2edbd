"""tune.budget and the sweep's time/cost estimate (tuning/budget.py). No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.loader import load_spec
from trainers.config import ScalingSection
from tuning.budget import asha_work_fraction, estimate, nodes_in_use, time_budget_s
from tuning.config import SchedulerSection

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def test_budget_reads_durations_and_node_hours():
    spec = load_spec(QUICKSTART, ["tune.budget.wall_time=1h30m", "tune.budget.node_hours=2"])
    assert spec.tune.budget.wall_seconds == 5400
    # 2 node-hours on 4 nodes buy 30 minutes; the smaller limit wins.
    assert time_budget_s(spec.tune, nodes=4) == 1800
    assert time_budget_s(spec.tune, nodes=1) == 5400
    both = load_spec(QUICKSTART, ["tune.budget.wall_time=2h", "tune.time_budget_s=600"])
    assert time_budget_s(both.tune, nodes=1) == 600
    assert time_budget_s(load_spec(QUICKSTART).tune, nodes=1) is None


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

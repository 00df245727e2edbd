"""The tune: section's domains translated to Ray Tune, sampled values applied to train:, the
concurrency plan, and the checks that fail before a sweep starts (no Ray cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from trainers.config import ScalingSection, TrainSection
from trainers.errors import UserError
from trainers.tasks import get_task
from tuning.concurrency import ResourcesError, plan_concurrency
from tuning.config import TuneSection
from tuning.search_space import apply_values, param_space, to_tune

TRAIN = TrainSection.model_validate({
    "model": {"name_or_path": "m", "task": "sequence-classification"},
    "lora": {"enabled": True, "r": 8},
    "data": {"train": "d.csv"},
})


def _domain(doc: dict):
    return TuneSection.model_validate({"search_space": {"x": doc}}).search_space["x"]


def _samples(domain, n: int = 400) -> list:
    return [domain.sample(random_state=np.random.RandomState(seed)) for seed in range(n)]


def test_loguniform_samples_in_range_and_spread_over_decades():
    values = _samples(to_tune(_domain({"type": "loguniform", "low": 1e-5, "high": 1e-1})))
    assert all(1e-5 <= v <= 1e-1 for v in values)
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-5, -4, -3, -2}  # log-uniform: every decade is hit, not just the top one
    below = sum(v < 1e-3 for v in values) / len(values)
    assert 0.35 < below < 0.65  # half the log-range lies below 1e-3


def test_uniform_samples_in_range():
    values = _samples(to_tune(_domain({"type": "uniform", "low": 0.0, "high": 0.3})))
    assert all(0.0 <= v <= 0.3 for v in values)
    assert max(values) > 0.25 and min(values) < 0.05


def test_integer_quniform_gives_ints_with_both_bounds():
    values = _samples(to_tune(_domain({"type": "quniform", "low": 4, "high": 16, "q": 4})))
    assert set(values) == {4, 8, 12, 16}
    assert all(isinstance(v, (int, np.integer)) for v in values)
    step_one = _samples(to_tune(_domain({"type": "quniform", "low": 1, "high": 3, "q": 1})))
    assert set(step_one) == {1, 2, 3}  # Tune's randint excludes its upper bound; ours includes it


def test_float_quniform_is_quantized():
    values = _samples(to_tune(_domain({"type": "quniform", "low": 0.0, "high": 0.5, "q": 0.1})))
    assert {round(v, 6) for v in values} <= {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    assert len({round(v, 6) for v in values}) >= 5


def test_quniform_bounds_must_be_multiples_of_q():
    with pytest.raises(ValidationError, match="multiple of q"):
        _domain({"type": "quniform", "low": 3, "high": 16, "q": 4})


def test_choice_and_grid():
    assert set(_samples(to_tune(_domain({"type": "choice", "values": [2, 4, 8]})))) == {2, 4, 8}
    assert to_tune(_domain({"type": "grid", "values": [1e-3, 1e-2]})) == {"grid_search": [1e-3, 1e-2]}


def test_param_space_has_one_flat_key_per_path():
    tune = TuneSection.model_validate({"search_space": {
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "lora.r": {"type": "grid", "values": [4, 16]},
    }, "trial_order": "grid"})
    space = param_space(tune)
    assert list(space) == ["optim.lr", "lora.r"]
    assert space["lora.r"] == {"grid_search": [4, 16]}


def test_grid_values_are_shuffled_by_default_the_same_way_every_time():
    values = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    doc = {"search_space": {"optim.lr": {"type": "grid", "values": values}, "lora.r": {"type": "grid", "values": [4, 8, 16, 32]}}}
    shuffled = param_space(TuneSection.model_validate(doc))
    assert shuffled == param_space(TuneSection.model_validate(doc))  # seeded: a resumed sweep sees the same
    lrs = shuffled["optim.lr"]["grid_search"]
    assert sorted(lrs) == values and lrs != values and lrs[0] != min(values)
    assert sorted(shuffled["lora.r"]["grid_search"]) == [4, 8, 16, 32]


def test_apply_values_revalidates_and_accepts_numpy_scalars():
    train = apply_values(TRAIN, {"optim.lr": np.float64(3e-4), "lora.r": np.int64(16)})
    assert train.optim.lr == pytest.approx(3e-4) and type(train.optim.lr) is float
    assert train.lora.r == 16 and type(train.lora.r) is int
    assert train.lora.resolved_alpha == 32  # derived values follow the sampled rank
    assert TRAIN.lora.r == 8  # the base spec is untouched
    with pytest.raises(ValidationError, match="lora.r"):
        apply_values(TRAIN, {"lora.r": 0})


def test_optuna_cannot_take_grids():
    with pytest.raises(ValidationError, match="cannot take grid domains.*lora.r"):
        TuneSection.model_validate({"search_alg": "optuna",
                                    "search_space": {"lora.r": {"type": "grid", "values": [4, 8]}}})


def test_asha_max_t_must_cover_the_grace_period():
    for max_t in (2, 3):  # grace_period >= max_t: no trial could ever be stopped
        with pytest.raises(ValidationError, match="max_t must be above grace_period, or no trial can stop early"):
            TuneSection.model_validate({"scheduler": {"grace_period": 3, "max_t": max_t}})
    TuneSection.model_validate({"scheduler": {"type": "none", "grace_period": 3, "max_t": 3}})


def test_optuna_chosen_but_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    from tuning.sweep import _require_optuna

    real = importlib.util.find_spec
    # Whether or not this machine has optuna, the driver is shown both ways.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(UserError, match=r"optuna is not installed.*pip install optuna.*search_alg: random"):
        _require_optuna()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real("json") if name == "optuna" else real(name, *a))
    _require_optuna()  # installed: nothing to say


def test_metric_names_follow_the_task():
    assert "eval_macro_f1" in get_task("sequence-classification").reported_metrics()
    assert "eval_f1" in get_task("token-classification").reported_metrics()
    assert "eval_perplexity" in get_task("causal-lm").reported_metrics()
    assert "Did you mean 'eval_macro_f1'" in get_task("sequence-classification").metric_problem("eval_macro_f")


def _scaling(**kw) -> ScalingSection:
    return ScalingSection.model_validate({"num_workers": 1, **kw})


def test_concurrency_is_derived_from_cpus_and_gpus():
    node = {"CPU": 8.0, "GPU": 2.0}
    assert plan_concurrency(_scaling(num_workers=2), None, {"CPU": 8.0}, [node]) == (4, None)
    gpu = _scaling(num_workers=1, use_gpu=True, cpus_per_worker=1)
    assert plan_concurrency(gpu, None, {"CPU": 8.0, "GPU": 2.0}, [node]) == (2, None)  # GPUs limit it
    many, note = plan_concurrency(_scaling(), 6, {"CPU": 2.0}, [{"CPU": 2.0}])
    assert many == 6 and "fits 2" in note


def test_a_trial_that_can_never_fit_is_a_user_error():
    with pytest.raises(ResourcesError, match="a trial needs 4 CPU .* the cluster has 2"):
        plan_concurrency(_scaling(num_workers=4), None, {"CPU": 2.0}, [{"CPU": 2.0}])
    with pytest.raises(ResourcesError, match="a worker needs 1 GPU but the largest node has 0"):
        plan_concurrency(_scaling(use_gpu=True), None, {"CPU": 4.0}, [{"CPU": 4.0}])
    with pytest.raises(ResourcesError, match="a worker needs 3 CPU but the largest node has 2"):
        plan_concurrency(_scaling(cpus_per_worker=3), None, {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])


def test_metric_and_mode_default_to_train_or_follow_the_metric_name():
    assert TuneSection().resolved_metric(TRAIN) == "eval_macro_f1"
    assert TuneSection().resolved_mode(TRAIN) == "max"
    assert TuneSection(metric="eval_loss").resolved_mode(TRAIN) == "min"  # not train's "max"
    assert TuneSection(metric="eval_accuracy").resolved_mode(TRAIN) == "max"
    assert TuneSection(metric="eval_loss", mode="max").resolved_mode(TRAIN) == "max"


def test_a_scheduler_that_can_stop_nothing_is_refused_at_load_time():
    from tuning.search_space import check_search_space

    train = TrainSection.model_validate({**TRAIN.model_dump(), "schedule": {"max_steps": 30, "eval_every_steps": 10}})
    few = TuneSection.model_validate({"scheduler": {"grace_period": 3}})  # 3 rounds, all within the grace period
    [problem] = check_search_space(few, train)
    assert problem.startswith("tune.scheduler.grace_period: every trial ends after at most 3 evaluation round(s)")
    assert "Lower grace_period below 3" in problem and "tune.scheduler.type: none" in problem
    assert check_search_space(TuneSection.model_validate({"scheduler": {"grace_period": 2}}), train) == []
    assert check_search_space(TuneSection.model_validate({"scheduler": {"type": "none", "grace_period": 3}}), train) == []


def _schedule(**kw) -> TrainSection:
    return TrainSection.model_validate({**TRAIN.model_dump(), "schedule": kw})


def test_rounds_are_counted_per_epoch_and_over_searched_schedules_at_load_time():
    from tuning.search_space import check_search_space

    chosen = {"scheduler": {"type": "successive_halving", "grace_period": 2}}
    # One round per epoch: two epochs never get past a grace period of two.
    [problem] = check_search_space(TuneSection.model_validate(chosen), _schedule(epochs=2))
    assert "at most 2 evaluation round(s) (one round per epoch, train.schedule.epochs 2)" in problem
    assert "successive halving can stop nothing early" in problem
    assert check_search_space(TuneSection.model_validate(chosen), _schedule(epochs=3)) == []
    # A searched schedule: refused only when its every configuration ends within the grace period.
    space = {"schedule.max_steps": {"type": "grid", "values": [10, 20]}}
    every = _schedule(eval_every_steps=10)
    [problem] = check_search_space(TuneSection.model_validate({**chosen, "search_space": space}), every)
    assert "every configuration of the searched schedule.max_steps" in problem
    space["schedule.max_steps"]["values"] = [10, 50]
    assert check_search_space(TuneSection.model_validate({**chosen, "search_space": space}), every) == []
    # The default scheduler, which the spec did not choose, is not refused for having nothing to stop.
    assert check_search_space(TuneSection.model_validate({}), _schedule(epochs=1)) == []


def test_a_search_space_whose_every_value_is_rejected_says_no_trial_could_start():
    from tuning.search_space import check_search_space

    def problems(space):
        return check_search_space(TuneSection.model_validate({"search_space": space}), TRAIN)

    [one] = problems({"optim.lr": {"type": "grid", "values": [20, 30]}})
    assert one.startswith("tune.search_space.optim.lr: every value is rejected, so no trial could start: value 20")
    [one] = problems({"optim.lr": {"type": "loguniform", "low": 11, "high": 30}})
    assert one.startswith("tune.search_space.optim.lr: both ends of the range are rejected, so no trial could start")
    [one] = problems({"optim.lr": {"type": "loguniform", "low": 1, "high": 30}})  # one end: narrow it
    assert "high 30.0 is rejected" in one and "narrow the range" in one and "no trial could start" not in one
    head, why = problems({"deepspeed.zero_stage": {"type": "grid", "values": [0]},
                          "deepspeed.offload_optimizer": {"type": "grid", "values": [True]}})
    assert head.startswith("tune.search_space: every combination of its values is rejected, so no trial could start")
    assert "offload_optimizer needs zero_stage 1, 2 or 3" in why
    partly = problems({"deepspeed.zero_stage": {"type": "grid", "values": [0, 2]},
                       "deepspeed.offload_optimizer": {"type": "grid", "values": [True]}})
    assert len(partly) == 1 and "every combination" in partly[0] and "no trial could start" not in partly[0]


def test_the_data_size_tells_the_rounds_when_the_spec_could_not():
    from tuning.sweep import _check_rounds

    train = _schedule(epochs=1, micro_batch_size=8, eval_every_steps=10)  # 100 rows: 13 steps, 2 rounds
    train = train.model_copy(update={"scaling": ScalingSection(num_workers=1)})
    chosen = TuneSection.model_validate({"scheduler": {"grace_period": 2}})
    with pytest.raises(UserError, match=r"ends after 2 evaluation round\(s\) \(13 steps at eval_every_steps 10 over "
                                        r"100 training rows\), within the grace period of 2, so ASHA can stop nothing"):
        _check_rounds(chosen, train, 100)
    assert _check_rounds(chosen, train, 1000) is None  # 125 steps: 13 rounds
    note = _check_rounds(TuneSection(), train.model_copy(update={"schedule": train.schedule.model_copy(
        update={"eval_every_steps": None, "epochs": 1})}), 100)  # the default scheduler: said, not refused
    assert note.startswith("note: tune.scheduler.grace_period: every trial ends after 1 evaluation round(s)")
    assert _check_rounds(chosen, train, None) is None  # each trial prepares its own data: nothing known here

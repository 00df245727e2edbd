"""Schedulers without Ray: synchronous successive halving's bookkeeping (tuning/halving.py), the
evaluation round a result belongs to (tuning/rounds.py), and the scheduler section's choices."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from tuning.config import SchedulerSection, TuneSection
from tuning.halving import Halving
from tuning.rounds import eval_round


def _halving(expected: int = 4, **kw) -> Halving:
    h = Halving(grace_period=kw.pop("grace_period", 1), reduction_factor=kw.pop("reduction_factor", 2),
                expected=expected, **kw)
    for i in range(expected):
        h.add(f"t{i}")
    return h


def test_every_trial_waits_at_the_rung_then_the_better_half_goes_on():
    h = _halving()
    assert h.on_result("t0", 1, 0.9) == ("pause", {})  # the others have not reached round 1 yet
    assert h.on_result("t1", 1, 0.2) == ("pause", {})
    assert not h.runnable("t0") and h.runnable("t2")  # a waiting trial does not train; the others may
    assert h.on_result("t2", 1, 0.3) == ("pause", {})
    # The last one arrives: the best two of four go on, the current one among them.
    assert h.on_result("t3", 1, 0.8) == ("continue", {"t0": "continue", "t1": "stop", "t2": "stop"})
    assert h.stopped == {"t1", "t2"} and h.runnable("t0") and not h.runnable("t1")
    # Rung 1 is at round 2 (grace x reduction factor): t0 and t3 compete there.
    assert h.milestone(1) == 2
    assert h.on_result("t3", 2, 0.85) == ("pause", {})
    assert h.on_result("t0", 2, 0.95) == ("continue", {"t3": "stop"})
    # One trial left: no rung stops it any more, it trains to its end.
    assert all(h.on_result("t0", r, 0.96) == ("continue", {}) for r in (3, 4, 8, 100))


def test_a_trial_that_ends_on_its_own_leaves_the_race_and_may_complete_a_rung():
    h = _halving(expected=3)
    h.on_result("t0", 1, 0.5)
    h.on_result("t1", 1, 0.4)
    assert h.on_leave("t2") == {"t0": "continue", "t1": "stop"}  # failed before round 1: the rung is complete
    # A trial whose training ended at the rung still counts there, and still takes its place.
    h = _halving(expected=2)
    assert h.on_result("t0", 1, 0.9) == ("pause", {})
    assert h.on_leave("t0") == {}  # t1 has not arrived yet
    assert h.on_result("t1", 1, 0.5) == ("stop", {})


def test_rung_zero_waits_for_every_trial_the_sweep_will_add():
    h = Halving(grace_period=1, reduction_factor=2, expected=3)
    h.add("t0")
    # Alone so far, but two more are coming: it waits, it does not run through the rung.
    assert h.on_result("t0", 1, 0.5) == ("pause", {})
    h.add("t1")
    h.add("t2")
    h.on_result("t1", 1, 0.6)
    assert h.on_result("t2", 1, 0.1) == ("stop", {"t0": "continue", "t1": "continue"})  # ceil(3 / 2) = 2 go on


def test_rungs_rise_geometrically_and_stop_before_max_t():
    h = _halving(grace_period=2, reduction_factor=3, max_t=10)
    assert [h.milestone(k) for k in range(3)] == [2, 6, 18]
    assert h.has_rung(0) and not h.has_rung(2)  # round 18 lies past max_t
    assert h.on_result("t0", 10, 1.0) == ("stop", {})  # max_t ends every trial, as ASHA's does
    odd = Halving(grace_period=1, reduction_factor=1.5, expected=2)
    assert [odd.milestone(k) for k in range(4)] == [1, 2, 3, 5]  # rounded up, and always rising


def test_a_result_past_several_rungs_is_judged_at_each_in_turn():
    h = _halving(expected=2)
    h.on_result("t0", 1, 0.9)
    # t1 restarted from a later checkpoint: its first result is round 3; rung 0 is decided with it.
    assert h.on_result("t1", 3, 0.1) == ("stop", {"t0": "continue"})


def test_forcing_a_stuck_rung_decides_it_with_the_scores_it_has():
    h = _halving(expected=3)
    h.on_result("t0", 1, 0.9)
    h.on_result("t1", 1, 0.1)
    # t2 never reports (say it never got its resources): rung 0 would wait for it forever.
    assert h.force() == {"t0": "continue", "t1": "stop"}
    assert h.force() == {}  # nothing waits any more
    # Should t2 arrive after all, it goes on only if it beats the trial that was promoted.
    assert h.on_result("t2", 1, 0.5) == ("stop", {})
    late = _halving(expected=3)
    late.on_result("t0", 1, 0.9)
    late.on_result("t1", 1, 0.1)
    late.force()
    assert late.on_result("t2", 1, 0.95) == ("continue", {})


def test_state_survives_a_pickle_round_trip():
    h = _halving()
    for t, v in (("t0", 0.9), ("t1", 0.2), ("t2", 0.3), ("t3", 0.8)):
        h.on_result(t, 1, v)
    again = pickle.loads(pickle.dumps(h))
    assert again == h and again.on_result("t1", 5, 1.0) == ("stop", {})


@pytest.mark.parametrize(("report", "every", "expected"), [
    ({"step": 20, "epoch": 0, "total_steps": 100}, 10, 2),
    ({"step": 95, "epoch": 3, "total_steps": 95}, 10, 10),  # the last round, off the grid
    ({"step": 1, "epoch": 0, "total_steps": 3}, 10, 1),
    # One round per epoch: at an epoch's end the report's epoch counts the finished epoch...
    ({"step": 12, "epoch": 1, "total_steps": 36}, None, 1),
    ({"step": 24, "epoch": 2, "total_steps": 36}, None, 2),
    # ...and at the last step (inside the epoch, or at the last epoch's end) the epoch under way.
    ({"step": 36, "epoch": 2, "total_steps": 36}, None, 3),
    ({"step": 30, "epoch": 2, "total_steps": 30}, None, 3),  # max_steps cut the third epoch
    ({"step": 5, "epoch": 0, "total_steps": 36, "diverged": 1}, None, 1),
])
def test_a_result_names_its_evaluation_round_over_the_whole_run(report, every, expected):
    assert eval_round(report, every) == expected


def test_scheduler_type_and_its_checks():
    assert SchedulerSection().type == "asha"  # the default
    sync = TuneSection.model_validate({"scheduler": {"type": "successive_halving", "grace_period": 2}})
    assert sync.scheduler.label.startswith("synchronous successive halving (grace 2")
    with pytest.raises(ValidationError, match="max_t must be above grace_period"):
        SchedulerSection(type="successive_halving", grace_period=3, max_t=3)
    with pytest.raises(ValidationError, match="'asha', 'successive_halving' or 'none'"):
        SchedulerSection.model_validate({"type": "hyperband"})


# --- state kept across --resume (tuning/schedulers.py), on Tune's own objects, no Ray started ------


def _trial(trial_id: str):
    from ray.tune.experiment import Trial

    return Trial("zerotune_trial", stub=True, trial_id=trial_id)


def test_asha_rungs_go_through_the_callback_state_and_judge_a_resumed_trial(capsys):
    from tuning.schedulers import KeepSchedulerState, ResumableASHA

    def asha():
        s = ResumableASHA(grace_period=1, reduction_factor=2, max_t=8)
        s.set_search_properties("eval_macro_f1", "max")
        return s

    before = asha()
    good, fair, weak = _trial("good"), _trial("fair"), _trial("weak")
    for t in (good, fair, weak):
        before.on_trial_add(None, t)
    before.on_trial_result(None, good, {"training_iteration": 1, "eval_macro_f1": 0.9})
    before.on_trial_result(None, fair, {"training_iteration": 1, "eval_macro_f1": 0.8})
    # What Tune saves with its experiment checkpoint, and reads back (pickled) on restore.
    saved = pickle.loads(pickle.dumps(KeepSchedulerState(before).get_state()))

    after = asha()
    KeepSchedulerState(after).set_state(saved)
    assert "ASHA's rungs restored (2 result(s) of 2 trial(s))" in capsys.readouterr().out
    assert after.recorded()[1] == {"good": 0.9, "fair": 0.8}
    for t in (good, fair, weak):  # a restored sweep adds every trial again
        after.on_trial_add(None, t)
    # The weak trial's first round after the resume meets the cut-off the others set before it.
    assert after.on_trial_result(None, weak, {"training_iteration": 1, "eval_macro_f1": 0.3}) == "STOP"
    # A blank scheduler (what Tune alone would give) lets it through.
    blank = asha()
    blank.on_trial_add(None, weak)
    assert blank.on_trial_result(None, weak, {"training_iteration": 1, "eval_macro_f1": 0.3}) == "CONTINUE"


def test_a_resumed_scheduler_without_saved_rungs_says_so(capsys):
    from tuning.schedulers import ResumableASHA

    s = ResumableASHA(grace_period=1, reduction_factor=2, max_t=8)
    s.set_search_properties("eval_macro_f1", "max")
    fresh = _trial("fresh")
    s.on_trial_add(None, fresh)
    assert capsys.readouterr().out == ""  # a new sweep: nothing to restore
    old = _trial("old")
    old.update_last_result({"training_iteration": 3, "eval_macro_f1": 0.5})
    s.on_trial_add(None, old)
    assert "rungs were not saved with it" in capsys.readouterr().out


def test_tuner_pkl_keeps_the_scheduler_and_its_state_callback_one_object(tmp_path):
    """The restore relies on it: Tune pickles tune_config (the scheduler) and run_config (the callbacks)
    in one tuner.pkl; the callback must put the state into the scheduler Tune will use."""
    from ray import tune as rt

    from tuning.schedulers import KeepSchedulerState, SyncHalving

    def trainable(config):
        pass

    s = SyncHalving(grace_period=1, reduction_factor=2, max_t=None, trials=4, concurrency=2)
    rt.Tuner(trainable, tune_config=rt.TuneConfig(metric="m", mode="max", scheduler=s),
             run_config=rt.RunConfig(name="sweep", storage_path=str(tmp_path), callbacks=[KeepSchedulerState(s)]))
    restored = rt.Tuner.restore(str(tmp_path / "sweep"), trainable=trainable)._local_tuner
    scheduler = restored._tune_config.scheduler
    assert scheduler is not s and scheduler is restored._run_config.callbacks[0].scheduler


def test_successive_halving_holds_new_trials_and_keeps_its_rungs_across_a_resume(capsys):
    from ray.tune.experiment import Trial

    from tuning.schedulers import KeepSchedulerState, SyncHalving

    def sync():
        s = SyncHalving(grace_period=1, reduction_factor=2, max_t=None, trials=3, concurrency=1)
        s.set_search_properties("eval_loss", "min")
        return s

    before = sync()
    trials = [_trial(f"t{i}") for i in range(3)]
    for t in trials:
        before.on_trial_add(None, t)
        # Held until the scheduler admits it (Tune would start every PENDING trial at once).
        assert t.status == Trial.PAUSED
    assert before.on_trial_result(None, trials[0], {"training_iteration": 1, "eval_loss": 0.2}) == "PAUSE"
    assert before.on_trial_result(None, trials[1], {"training_iteration": 1, "eval_loss": 0.9}) == "PAUSE"
    saved = pickle.loads(pickle.dumps(KeepSchedulerState(before).get_state()))

    after = sync()
    KeepSchedulerState(after).set_state(saved)
    assert "successive halving restored (2 rung result(s), 0 trial(s) halved out)" in capsys.readouterr().out
    for t in trials:
        t.set_status(Trial.PENDING)  # what a restore does to every unfinished trial
        after.on_trial_add(None, t)
    assert after.halving == before.halving
    assert [after.halving.runnable(t.trial_id) for t in trials] == [False, False, True]  # two wait at the rung
    # The last one arrives (scores are signed: lower loss is better): t0 and t2 go on, t1 stops.
    assert after.halving.on_result("t2", 1, -0.5) == ("continue", {"t0": "continue", "t1": "stop"})


@pytest.mark.parametrize("kind", ["asha", "successive_halving"])
def test_rungs_judge_on_their_own_metric_while_the_sweep_keeps_its_own(kind):
    """tune.scheduler.metric: eval_loss decides the cut; macro-F1 (the same for all, at the majority-class
    floor after one round) is what Tune passes and what picks the winner."""
    from tuning.schedulers import build_scheduler

    section = SchedulerSection.model_validate({"type": kind, "grace_period": 1, "reduction_factor": 2,
                                               "metric": "eval_loss"})
    assert "rungs on eval_loss" in section.label
    s, _, _ = build_scheduler(section, trials=2, concurrency=2, mode_of=lambda m: "min" if m == "eval_loss" else "max")
    assert s.set_search_properties("eval_macro_f1", "max")  # Tune's call with the sweep's metric: accepted
    a, b = _trial("a"), _trial("b")
    for t in (a, b):
        s.on_trial_add(None, t)
    floor = {"training_iteration": 1, "eval_macro_f1": 0.2}
    first = s.on_trial_result(None, a, {**floor, "eval_loss": 0.6})
    if kind == "successive_halving":  # it waits at the rung, scored by its loss (signed: lower is better)
        assert first == "PAUSE" and s.halving.scores[0] == {"a": -0.6}
        return
    second = s.on_trial_result(None, b, {**floor, "eval_loss": 0.9})  # the worse loss, the same F1
    assert (first, second) == ("CONTINUE", "STOP")


def test_a_scheduler_pickled_before_rung_metrics_existed_still_resumes():
    """tuner.pkl from an older zerotune holds a scheduler without the rung-metric attribute."""
    from tuning.schedulers import ResumableASHA, SyncHalving

    for s in (ResumableASHA(grace_period=1, reduction_factor=2, max_t=8),
              SyncHalving(grace_period=1, reduction_factor=2, max_t=None, trials=2, concurrency=2)):
        s.__dict__.pop("_own_metric")
        old = pickle.loads(pickle.dumps(s))
        assert old.set_search_properties("eval_macro_f1", "max")
        assert old._metric == "eval_macro_f1"

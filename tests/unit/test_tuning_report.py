"""Trial records -> ranked table, best.json content and plots (no Ray cluster)."""

from __future__ import annotations

import csv
import math

import pytest

from trainers.config import TrainSection
from trainers.rounds import RoundReport
from tuning.records import ENDED, Round, TrialRecord, _full_steps, error_message, outcome_of, round_from_row
from tuning.report import SweepWinner, markdown, rank, sweep_winner, table_rows, winner, write_report

METRIC = "eval_macro_f1"
PATHS = ["optim.lr", "lora.r"]
TRAIN = TrainSection.model_validate({"model": {"name_or_path": "m", "task": "sequence-classification"},
                                     "data": {"train": "t.csv"}, "lora": {"enabled": True, "r": 8}})


def _report(step: int, value: float | None, params: int, total_steps: int = 50) -> RoundReport:
    return RoundReport(step=step, total_steps=total_steps, epoch=0, lr=1e-3, train_loss=0.5, trainable_params=params,
                       total_params=1000, eval={METRIC: value if value is not None else float("nan")})


def _trial(tid: str, lr: float, r: int, values: list[float | None], outcome="completed", error=None,
           params=None) -> TrialRecord:
    rounds = tuple(
        Round(step=10 * (i + 1), value=v, checkpoint=f"/runs/trial_{tid}/checkpoint_{10 * (i + 1):06d}",
              report=_report(10 * (i + 1), v, params or 100 * r))
        for i, v in enumerate(values))
    return TrialRecord(trial_id=tid, config={"optim.lr": lr, "lora.r": r}, rounds=rounds, outcome=outcome,
                       wall_s=12.34, error=error)


RECORDS = [
    _trial("x_00000", 1e-3, 4, [0.5, 0.7, 0.65]),  # best round is not the last one
    _trial("x_00001", 1e-2, 8, [0.6, 0.9]),
    _trial("x_00002", 10.0, 4, [0.3], outcome="stopped early"),
    _trial("x_00003", 10.0, 8, [None], outcome="stopped early"),  # diverged: no finite metric
    _trial("x_00004", 3e-3, 16, [0.95], outcome="failed", error="RuntimeError: worker died"),
    _trial("x_00005", 3e-3, 2, [], outcome="not started"),
]


def test_rank_puts_best_first_and_unscored_or_failed_last():
    order = [r.trial_id for r in rank(RECORDS, "max")]
    assert order[:3] == ["x_00001", "x_00000", "x_00002"]
    # A failed trial never wins, even with a high metric; unscored ones follow in trial order.
    assert order[3:] == ["x_00003", "x_00004", "x_00005"]
    assert winner(RECORDS, "max").trial_id == "x_00001"
    assert [r.trial_id for r in rank(RECORDS, "min")][:3] == ["x_00002", "x_00000", "x_00001"]


def test_no_winner_when_nothing_scored():
    assert winner([r for r in RECORDS if r.trial_id in ("x_00003", "x_00004", "x_00005")], "max") is None


def test_table_rows_carry_best_final_rounds_params_and_status():
    rows = table_rows(RECORDS, METRIC, "max", PATHS)
    first = rows[0]
    assert first["rank"] == 1 and first["trial_id"] == "x_00001"
    assert (first["optim.lr"], first["lora.r"]) == (1e-2, 8)
    second = rows[1]
    assert second[f"best_{METRIC}"] == 0.7 and second[f"final_{METRIC}"] == 0.65
    assert second["checkpoint"].endswith("checkpoint_000020")  # the best round's checkpoint
    assert second["rounds"] == 3 and second["trainable_params"] == 400
    stopped = next(r for r in rows if r["trial_id"] == "x_00002")
    assert stopped["stopped_early"] is True and stopped["status"] == "stopped early"
    failed = next(r for r in rows if r["trial_id"] == "x_00004")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: worker died"
    assert [r["rank"] for r in rows] == [1, 2, 3, None, None, None]
    assert next(r for r in rows if r["trial_id"] == "x_00005")["trainable_params"] is None


def test_best_document_matches_the_first_row():
    best = winner(RECORDS, "max")
    doc = sweep_winner(best, sweep="s", metric=METRIC, mode="max", train=TRAIN)
    row = table_rows(RECORDS, METRIC, "max", PATHS)[0]
    assert doc.trial_id == row["trial_id"] and doc.value == row[f"best_{METRIC}"]
    assert doc.checkpoint == row["checkpoint"] and doc.config == {"optim.lr": 1e-2, "lora.r": 8}
    assert doc.metrics.value(METRIC) == 0.9 and doc.step == 20
    # best.json reads back into the same typed object
    assert SweepWinner.model_validate_json(doc.model_dump_json()) == doc


def test_markdown_is_readable():
    md = markdown(table_rows(RECORDS, METRIC, "max", PATHS), "s: 6 trials")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| rank"))
    assert "checkpoint" not in header and "trainable_params" in header
    assert "| 1 | x_00001 | 0.01 | 8 | 0.9 | 0.9 | 2 |  | 800 |" in md
    assert "| yes |" in md  # stopped early
    assert "- `x_00004`: RuntimeError: worker died" in md


def test_write_report_writes_csv_md_and_pngs(tmp_path):
    rows = write_report(RECORDS, tmp_path, sweep="s", metric=METRIC, mode="max", paths=PATHS)
    with (tmp_path / "trials.csv").open() as f:
        read = list(csv.DictReader(f))
    assert [r["trial_id"] for r in read] == [r["trial_id"] for r in rows]
    assert float(read[0][f"best_{METRIC}"]) == 0.9 and read[0]["stopped_early"] == "False"
    assert read[-1][f"best_{METRIC}"] == ""
    for name in ("trials.png", "learning_curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without a searched learning rate or rank the plot falls back to the trial index.
    plain = [TrialRecord(trial_id=f"y_{i}", config={"optim.weight_decay": 0.1 * i},
                         rounds=(Round(step=5, value=0.5 + i / 10, checkpoint=None),), outcome="completed",
                         wall_s=1.0) for i in range(3)]
    write_report(plain, tmp_path / "plain", sweep="p", metric=METRIC, mode="max", paths=["optim.weight_decay"])
    assert (tmp_path / "plain" / "trials.png").stat().st_size > 0


def test_rounds_from_tune_rows_keep_loop_metrics_only():
    loop = _report(30, float("-inf"), 578).to_ray()
    row = {**loop, "checkpoint_path": "/c", "training_iteration": 3, "time_this_iter_s": 2.0, "trial_id": "t",
           "config/lora.r": 2, "done": False, ENDED: "stopped"}
    r = round_from_row(row, METRIC)
    assert r.value is None and r.step == 30 and r.checkpoint == "/c"  # -inf (diverged) is not a score
    assert r.report is not None and r.report.trainable_params == 578
    assert set(r.report.eval) == {"eval_macro_f1"}  # Tune's own keys are not the loop's metrics
    assert math.isinf(r.report.eval["eval_macro_f1"])
    assert round_from_row({"training_iteration": 1, "trial_id": "t"}, METRIC).report is None


def test_outcome_tells_scheduler_stops_from_finished_runs():
    rounds = tuple(Round(step=s, value=0.5, checkpoint=None) for s in (10, 20))
    stopped = {ENDED: "stopped", "done": True}
    assert outcome_of(stopped, rounds, False, None, 50) == "stopped early"
    assert outcome_of(stopped, rounds, False, None, 20) == "completed"  # stopped at its very last round
    assert outcome_of(stopped, rounds, False, 2, 50) == "completed"  # reached max_t
    assert outcome_of({ENDED: "completed"}, rounds, False, None, 50) == "completed"
    assert outcome_of({ENDED: "interrupted"}, rounds, False, None, 50) == "interrupted"  # time budget
    assert outcome_of({"done": True}, rounds, False, None, 50) == "interrupted"  # never seen to end
    assert outcome_of({}, (), False, None, None) == "not started"
    assert outcome_of({ENDED: "completed"}, rounds, True, None, None) == "failed"


def test_a_trial_with_a_shorter_searched_schedule_that_ran_to_its_end_completed():
    # Its own total_steps (20) wins over the furthest step any trial reached (50).
    rounds = tuple(Round(step=s, value=0.5, checkpoint=None, report=_report(s, 0.5, 10, total_steps=20))
                   for s in (10, 20))
    assert _full_steps(rounds, 50) == 20
    assert outcome_of({ENDED: "stopped"}, rounds, False, None, _full_steps(rounds, 50)) == "completed"
    assert _full_steps((), 50) == 50  # no rounds report it: fall back to the sweep's longest


def test_error_message_unwraps_the_cause():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("Traceback ...\n  lots of frames\nValueError: bad")
            self.cause = cause

    assert error_message(Wrapper(ValueError("bad column 'x'"))) == "ValueError: bad column 'x'"
    assert error_message(RuntimeError("line 1\nTuneError: last line")) == "TuneError: last line"
    assert error_message(None) is None


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_round_follows_mode(mode):
    t = _trial("z", 1e-3, 4, [0.5, 0.2, 0.9])
    assert t.best_round(mode).value == (0.9 if mode == "max" else 0.2)

"""report.html from a sweep's real report files, opened in a real headless Chromium: its images
load (data: URIs, so a copied folder keeps them), its links are relative, and it says who won,
why, the held-out scores beside the baseline and the command that serves the winner."""

from __future__ import annotations

import shutil

from tests.browser import images_of
from tests.unit.test_tuning_report import METRIC, PATHS, RECORDS, TRAIN
from trainers.storage import Location
from tuning.html_report import HeldOut, render, sweep_page, write
from tuning.report import sweep_winner, winner, write_report


def _sweep(tmp_path):
    exp = tmp_path / "results" / "demo"
    rows = write_report(RECORDS, exp, sweep="demo", metric=METRIC, mode="max", paths=PATHS)
    best = sweep_winner(winner(RECORDS, "max"), sweep="demo", metric=METRIC, mode="max", train=TRAIN)
    (exp / "best.json").write_text(best.model_dump_json())
    return exp, best, rows


def test_report_html_loads_its_plots_in_chromium_after_the_folder_is_copied(tmp_path):
    exp, best, rows = _sweep(tmp_path)
    log = exp / "logs" / "run-1.log"
    log.parent.mkdir()
    log.write_text("library output\n")
    held = HeldOut(rows=96, model={"accuracy": 0.81, "macro_f1": 0.78}, baseline={"accuracy": 0.74, "macro_f1": 0.7},
                   url="http://127.0.0.1:8000")
    page = sweep_page(Location.parse(exp), best, rows, held_out=held, log_file=Location.parse(log),
                      serve_command="zerotune serve exp.yaml --checkpoint /runs/trial_x_00001/checkpoint_000020")
    out = write(Location.parse(exp), page)
    assert out.path == str(exp / "report.html")
    # Copy the folder elsewhere and remove the original: the page must not depend on it.
    copy = tmp_path / "copied"
    shutil.copytree(exp, copy)
    shutil.rmtree(exp)
    images = images_of(copy / "report.html")
    assert len(images) == 2, images
    for img in images:
        assert img["src"].startswith("data:image/png;base64"), img
        assert img["complete"] and img["width"] > 0, img

    text = (copy / "report.html").read_text()
    assert "Trial x_00001 (optim.lr=0.01, lora.r=8) had the highest eval_macro_f1, 0.9000, of the 6 trials" in text
    assert "runner-up, trial x_00000, reached 0.7000" in text
    assert "zerotune serve exp.yaml --checkpoint /runs/trial_x_00001/checkpoint_000020" in text
    assert "TF-IDF + logistic regression" in text and "0.7800" in text and "0.7000" in text and ">96 rows" in text
    for rel in ("href='trials.csv'", "href='runs'", "href='logs/run-1.log'", "href='best.json'"):
        assert rel in text, rel
    assert "RuntimeError: worker died" in text  # the failed trial's error is listed
    assert "<script" not in text


def test_a_plot_that_is_missing_is_left_out_not_a_broken_image(tmp_path):
    exp, best, rows = _sweep(tmp_path)
    (exp / "learning_curves.png").unlink()
    html = render(sweep_page(Location.parse(exp), best, rows, serve_command=None))
    assert html.count("<img") == 1 and "trials.png" in html
    assert "serve the winner" not in html


def test_a_run_without_a_sweep_gets_a_report_for_its_one_model(tmp_path):
    from cluster.report_html import write_run_report
    from cluster.spec import ExperimentSpec
    from trainers.launch import FitResult
    from trainers.rounds import RoundReport

    spec = ExperimentSpec.model_validate({
        "name": "solo", "cluster": {"storage_path": str(tmp_path / "results")},
        "train": {"model": {"name_or_path": "m", "task": "sequence-classification"}, "data": {"train": "d.csv"}},
    })
    run = tmp_path / "results" / "solo"
    run.mkdir(parents=True)
    common = {"total_steps": 60, "epoch": 0, "lr": 1e-4, "trainable_params": 10, "total_params": 100}
    best = RoundReport(step=40, train_loss=0.5, eval={"eval_accuracy": 0.8, "eval_macro_f1": 0.75}, **common)
    final = RoundReport(step=60, train_loss=0.4, eval={"eval_accuracy": 0.78, "eval_macro_f1": 0.7}, **common)
    ckpt = str(run / "checkpoint_000001")
    result = FitResult(run_dir=str(run), final=final, best_checkpoint=ckpt, latest_checkpoint=str(run / "x"), best=best)
    held = HeldOut(rows=96, model={"accuracy": 0.81, "macro_f1": 0.78}, baseline={"accuracy": 0.74, "macro_f1": 0.7})

    out = write_run_report(spec, result, ckpt, held_out=held)
    assert out.path == str(run / "report.html")
    text = (run / "report.html").read_text()
    assert "no tune: section" in text and "at step 40 of 60 (eval_macro_f1 0.7500, by highest eval_macro_f1)" in text
    assert "Validation at that round: accuracy 0.8000, macro_f1 0.7500." in text
    assert "href='checkpoint_000001'" in text and "href='tensorboard'" in text  # relative: the folder can move
    assert f"zerotune serve solo.yaml --checkpoint {ckpt}" in text
    assert f"tensorboard --logdir {run / 'tensorboard'}" in text
    assert "TF-IDF + logistic regression" in text and "0.7800" in text
    assert "<img" not in text and "id='trials'" not in text  # no sweep: no trials or trial plots

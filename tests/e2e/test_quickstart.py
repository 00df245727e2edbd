"""The quickstart itself, smaller: real MiniLM, real tweets, tune -> winner -> serve -> HTTP scoring.

Runs `zerotune run examples/quickstart.yaml` as a user would (its own embedded Ray), on a smaller
subsample, then checks the run directory and that the served answers are the checkpoint's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.net import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent




def test_quickstart_pipeline_end_to_end(tmp_path):
    from cluster.connect import shutdown

    # One Ray per machine: Ray Train releases a stopped trial's workers through the state API,
    # which cannot tell two local clusters apart. The run below starts its own embedded Ray.
    shutdown()
    storage = tmp_path / "results"
    overrides = [
        f"cluster.storage_path={storage}", "cluster.num_cpus=2",
        "train.data.max_train_samples=320", "train.data.max_eval_samples=96",
        "train.schedule.eval_every_steps=10",
        "tune.search_space.optim.lr.values=[3.0e-4, 6.0e-3]", "tune.search_space.lora.r.values=[4]",
        f"serve.port={free_port()}",
    ]
    r = subprocess.run([str(BIN / "zerotune"), "run", "examples/quickstart.yaml", *overrides, "--exit"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    for stage in ("stage 1/3", "stage 2/3", "stage 3/3", "=== zerotune run: quickstart ===",
                  "TF-IDF + logistic regression", "zerotune (served)"):
        assert stage in out, stage

    from cluster.pipeline import RunSummary
    from tuning.report import SweepWinner

    run_dir = storage / "quickstart"
    best = SweepWinner.model_validate_json((run_dir / "best.json").read_text())
    summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    for name in ("trials.csv", "trials.md", "trials.png"):
        assert (run_dir / name).is_file(), name
    assert summary.checkpoint == best.checkpoint
    assert summary.test_rows == 96

    # The served answers are the checkpoint's own: score the same test rows in-process.
    import torch

    from trainers.baseline import held_out, score, tfidf_baseline
    from trainers.checkpoint import load_for_inference
    from trainers.data import load_splits
    from trainers.tasks import get_task

    loaded = load_for_inference(best.checkpoint)
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.train
    splits = load_splits(spec.data, get_task(spec.model.task), spec.model.labels)
    rows = splits.test
    labels = spec.model.labels
    # The baseline beside it is TF-IDF on these very splits, and the model learned something:
    # it beats always answering the most frequent label.
    assert summary.baseline_metrics == pytest.approx(tfidf_baseline(spec, splits))
    gold_ids = held_out(spec, splits).gold
    majority = max(set(gold_ids), key=gold_ids.count)
    assert summary.test_metrics["macro_f1"] > score(gold_ids, [majority] * len(gold_ids), len(labels))["macro_f1"]
    with torch.no_grad():
        enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True,
                        max_length=spec.data.max_length, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).tolist()
    gold = [labels.index(r["sentiment"]) for r in rows]
    direct = score(gold, predicted, len(labels))
    assert direct["accuracy"] == pytest.approx(summary.test_metrics["accuracy"], abs=2 / len(rows))

"""What a user sees: the quickstart's own command on a tiny model prints only zerotune's lines --
no line from Ray's, DeepSpeed's or transformers' loggers -- while a real error (a trial whose loss
diverges) still shows; everything else is in the log file named on the first line; report.html
opens in Chromium with its plots; and -v brings the libraries' output back to the terminal (on a
`zerotune run` without a sweep, which still writes its report.html).

Each command runs as a user runs it: the installed `zerotune`, its own embedded Ray, stdout a pipe
(so the live views print plain lines, as in CI logs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import images_of
from tests.net import free_port
from tests.tiny import make_model, sentiment_rows, write_csv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Lines the libraries print or log, by their own formats.
LIBRARY_LINE = re.compile(
    r"^\((\w[\w:.\-]* )?pid=|^\(raylet\)|core_worker\.cc|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|ERROR)"
    r"|\[(INFO|WARNING|ERROR)\] \[\w+\.py:\d+|Warning: |warnings\.warn|^(INFO|WARNING|ERROR) \d{4}-"
    r"|Configuration for experiment|tensorboard --logdir /tmp/ray|Traceback|^\s+File \"")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cluster.connect import shutdown

    shutdown()  # one Ray per machine: each command below starts its own
    d = tmp_path_factory.mktemp("console")
    rows = [{"text": r["text"], "sentiment": {"pos": "positive", "neg": "negative"}[r["label"]]}
            for r in sentiment_rows(400)]
    return make_model(d / "model", "sequence-classification"), write_csv(d / "tweets.csv", rows), _nan_model(d)


def _nan_model(d: Path) -> str:
    """The tiny model with one NaN weight: its very first loss is NaN, as a real blow-up's would be."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = make_model(d / "nan-model", "sequence-classification")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(path, safe_serialization=True)
    return path


def _zerotune(*args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, str]:
    r = subprocess.run([str(BIN / "zerotune"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    return r, r.stdout + r.stderr


def _tiny_overrides(tiny, storage: Path) -> list[str]:
    model, data, _ = tiny
    return [f"cluster.storage_path={storage}", "cluster.num_cpus=2", f"train.model.name_or_path={model}",
            "train.model.labels=[negative, positive]", f"train.data.train={data}", "train.data.max_length=24",
            "train.data.max_train_samples=320", "train.data.max_eval_samples=40",
            "train.schedule.eval_every_steps=5", "train.schedule.log_every_steps=5"]


def test_quickstart_console_shows_only_zerotune_and_its_errors(tiny, tmp_path):
    storage = tmp_path / "results"
    # The second model is planted to fail its trial: its loss diverges at once.
    model, _, nan_model = tiny
    r, out = _zerotune("run", "examples/quickstart.yaml", *_tiny_overrides(tiny, storage),
                       "tune.search_space={optim.lr: {type: grid, values: [5.0e-2]}, lora.r: {type: grid, values: [4]},"
                       f" model.name_or_path: {{type: grid, values: [{model}, {nan_model}]}}}}",
                       f"serve.port={free_port()}", "--exit")
    assert r.returncode == 0, out[-6000:]
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert r.stderr == "", r.stderr[-3000:]

    # The first line names the log file, which holds what the libraries said.
    first = re.match(r"\[zerotune\] log: (\S+) \(", lines[0])
    assert first, lines[0]
    log = Path(first.group(1))
    assert log.parent == storage / "quickstart" / "logs"
    logged = log.read_text()
    # One-worker trials train in the trial's own process (trainers/in_process.py): its lines are run_trial's.
    for library in ("(run_trial pid=", "Setting accelerator to CPU", "Configuration for experiment", "INFO"):
        assert library in logged, library

    # No library line on the console: every line is zerotune's ([zerotune] ...) or its summary block.
    noisy = [x for x in lines if LIBRARY_LINE.search(x)]
    assert not noisy, "\n".join(noisy)
    summary_at = next(i for i, x in enumerate(lines) if x.startswith("=== zerotune run: quickstart"))
    strays = [x for x in lines[:summary_at] if not x.startswith("[zerotune] ")]
    assert not strays, "\n".join(strays)
    assert "PreemptionWatcher" not in logged  # Ray Train's watcher is off on an embedded Ray

    # The planted error shows, once, as zerotune's line naming the cause and the fix.
    failed = [x for x in lines if re.match(r"\[zerotune\] trial \w+ failed: ", x)]
    assert len(failed) == 1 and "diverged" in failed[0] and "optim.lr" in failed[0], failed
    # Worker-side zerotune lines reached the console through the feed; the sweep speaks for its trials
    # (a model is searched here, so the trials prepare the data: the first to need it says so).
    assert any(re.match(r"\[zerotune\] trial \w+: done: \d+ steps", x) for x in lines), lines
    assert any(": data prepared at " in x for x in lines), lines
    assert not any("sequence-classification on" in x for x in lines), lines
    assert any(x.startswith("[zerotune] new best: trial ") for x in lines), lines

    # One report: winner, held-out scores beside the baseline, the serve command, loadable plots.
    report = storage / "quickstart" / "report.html"
    text = report.read_text()
    assert "TF-IDF + logistic regression" in text and "zerotune serve examples/quickstart.yaml" in text
    assert f"report:        {report}" in r.stdout
    assert re.search(r"^time: +train \d+s, serve \d+s, test \d+s$", r.stdout, re.M), r.stdout[-2000:]
    images = images_of(report)
    assert len(images) == 2 and all(i["width"] > 0 for i in images), images


def test_verbose_brings_the_libraries_output_back_and_a_run_without_a_sweep_has_its_report(tiny, tmp_path):
    storage = tmp_path / "results"
    r, out = _zerotune("run", "examples/quickstart.yaml", *_tiny_overrides(tiny, storage), "tune=null", "serve=null",
                       "train.schedule.max_steps=5", "-v")
    assert r.returncode == 0, out[-6000:]
    assert "(RayTrainWorker pid=" in out and "(TrainController pid=" in out, out[-4000:]
    assert "[zerotune] eval at step 5/5" in out  # zerotune's own lines still there
    assert "[zerotune] log: " in r.stdout.splitlines()[0]
    assert "tensorboard --logdir " + str(storage / "quickstart" / "tensorboard") in out
    report = storage / "quickstart" / "report.html"
    assert f"report:        {report}" in r.stdout and "no tune: section" in report.read_text()

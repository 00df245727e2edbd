"""trainers.in_process.RunCheckpoints: the checkpoints of a run trained in the trial's own process,
kept as Ray Train keeps them, on a local directory and on a real S3-compatible server (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.in_process import INDEX_FILE, RunCheckpoints
from trainers.storage import Location

METRIC = "eval_macro_f1"


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path) -> Location:
    if request.param == "local":
        return Location.parse(tmp_path / "runs" / "trial_x")
    options = request.getfixturevalue("s3")
    return Location.parse(f"s3://unit/{tmp_path.name}/runs/trial_x?{options}")


def _checkpoint(tmp_path: Path, step: int) -> Path:
    d = tmp_path / f"local_{step}"
    (d / "state").mkdir(parents=True, exist_ok=True)
    (d / "state" / "trainer_state.json").write_text(f'{{"step": {step}}}')
    (d / "model.safetensors").write_bytes(b"w" * step)
    return d


def _add(ckpts: RunCheckpoints, tmp_path: Path, step: int, value: float, **extra) -> Location:
    return ckpts.add(_checkpoint(tmp_path, step), f"checkpoint_{step:06d}", {"step": step, METRIC: value, **extra})


def test_keeps_the_best_n_and_the_latest_and_reopens_from_the_index(run, tmp_path):
    ckpts = RunCheckpoints(run, keep=2, metric=METRIC, mode="max")
    assert ckpts.latest() is None and ckpts.best() is None
    for step, value in ((10, 0.5), (20, 0.9), (30, 0.7), (40, 0.6)):
        _add(ckpts, tmp_path, step, value)
    # Best two by the metric (20, 30) and the latest (40); 10 is gone from storage too.
    assert sorted(c for c in run.list() if c.startswith("checkpoint_")) == \
        ["checkpoint_000020", "checkpoint_000030", "checkpoint_000040"]
    assert ckpts.best().name == "checkpoint_000020"
    latest = ckpts.latest()
    assert latest.name == "checkpoint_000040"
    assert latest.join("model.safetensors").read_bytes() == b"w" * 40
    assert latest.join("state", "trainer_state.json").read_text() == '{"step": 40}'
    # A later process (a retried or resumed trial) finds the same from the index alone.
    again = RunCheckpoints(run, keep=2, metric=METRIC, mode="max")
    assert again.latest() == latest and again.best().name == "checkpoint_000020"


def test_min_mode_and_a_diverged_marker_is_latest_but_never_best(run, tmp_path):
    ckpts = RunCheckpoints(run, keep=1, metric="eval_loss", mode="min")
    ckpts.add(_checkpoint(tmp_path, 10), "checkpoint_000010", {"step": 10, "eval_loss": 0.4})
    ckpts.add(_checkpoint(tmp_path, 20), "checkpoint_000020", {"step": 20, "eval_loss": 0.3})
    ckpts.add(_checkpoint(tmp_path, 21), "checkpoint_000021_diverged",
              {"step": 21, "eval_loss": float("inf"), "diverged": True})
    assert ckpts.best().name == "checkpoint_000020"
    assert ckpts.latest().name == "checkpoint_000021_diverged"
    assert "checkpoint_000010" not in run.list()


def test_a_checkpoint_missing_from_the_index_is_never_resumed_from(run, tmp_path):
    ckpts = RunCheckpoints(run, keep=2, metric=METRIC, mode="max")
    _add(ckpts, tmp_path, 10, 0.5)
    # A process killed mid-upload leaves files the index never listed.
    run.join("checkpoint_000020").upload(_checkpoint(tmp_path, 20))
    reopened = RunCheckpoints(run, keep=2, metric=METRIC, mode="max")
    assert reopened.latest().name == "checkpoint_000010"
    # Reaching that step again replaces the partial copy rather than mixing into it.
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "stray.bin").write_bytes(b"half")
    run.join("checkpoint_000020").upload(tmp_path / "stale")
    _add(reopened, tmp_path, 20, 0.6)
    assert "stray.bin" not in run.join("checkpoint_000020").files()
    assert INDEX_FILE in run.list()


def test_a_rerun_with_nothing_left_to_train_reports_its_last_round_again(tmp_path):
    from trainers.in_process import InProcessSession

    run = Location.parse(tmp_path / "runs" / "trial_y")
    _add(RunCheckpoints(run, keep=2, metric=METRIC, mode="max"), tmp_path, 10, 0.5)
    rows: list[dict] = []
    session = InProcessSession("trial_y", RunCheckpoints(run, keep=2, metric=METRIC, mode="max"), rows.append,
                               use_gpu=False)
    session.report_latest_again()
    assert rows == [{"step": 10, METRIC: 0.5, "checkpoint_path": str(tmp_path / "runs" / "trial_y" / "checkpoint_000010")}]
    assert session.last == {"step": 10, METRIC: 0.5}

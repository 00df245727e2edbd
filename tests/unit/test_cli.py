"""The installed `zerotune` command: exit codes, no traceback for user errors, no Ray for validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _zerotune(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray"))
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_validate_ok_and_no_ray_starts(tmp_path):
    r = _zerotune("validate", "examples/quickstart.yaml", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert not (tmp_path / "ray").exists(), "validate must not start Ray"


def test_bad_spec_exits_2_without_traceback_and_no_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  model: {name_or_path: m, task: regression}\n  data: {train: a.csv}\n")
    r = _zerotune("validate", str(bad), tmp_path=tmp_path)
    assert r.returncode == 2
    assert "train.model.task" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ray").exists()


def test_show_prints_resolved_spec_with_derived_values(tmp_path):
    r = _zerotune("show", "examples/quickstart.yaml", "train.scaling.num_workers=2", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "global_batch_size: 32" in r.stdout
    assert "zero_stage: 2" in r.stdout


def test_schema_is_json_schema(tmp_path):
    r = _zerotune("schema", tmp_path=tmp_path)
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "ExperimentSpec"
    assert "train" in schema["required"]

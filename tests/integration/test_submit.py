"""`zerotune submit` against a real `ray start --head` cluster on this machine (Jobs API).

The cluster runs in its own process group, started and stopped here, apart from the session's
embedded Ray; the job trains a tiny model built in code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.net import free_port
from tests.tiny import make_model, sentiment_rows, write_csv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent




@pytest.fixture
def head_node(tmp_path):
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         # its own job-agent port: another Ray on this machine (the session's) holds the default
         f"--dashboard-agent-listen-port={agent}",
         f"--temp-dir={tempfile.mkdtemp(prefix='zt-ray-', dir='/tmp')}"],  # short: socket paths are capped
        env=env, cwd=ROOT, start_new_session=True, stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    import httpx

    while time.time() < deadline:
        try:
            httpx.get(f"{url}/api/version", timeout=2)  # any answer (401 without a token) means it is up
            break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the head node's dashboard never answered: " + (tmp_path / "head.log").read_text()[-2000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_submit_runs_the_job_on_the_cluster_and_follows_logs(head_node, tmp_path):
    model = make_model(tmp_path / "model", "sequence-classification")
    data = write_csv(tmp_path / "d.csv", sentiment_rows(96))
    storage = tmp_path / "storage"
    r = subprocess.run(
        [str(BIN / "zerotune"), "submit", "examples/smoke.yaml", f"train.model.name_or_path={model}",
         f"train.data.train={data}", "train.data.label_column=label", "train.data.max_length=16",
         f"cluster.storage_path={storage}", "--command", "train", "--address", head_node],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}"),
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "SUCCEEDED" in out
    assert "[zerotune] eval at step" in out, out[-6000:]  # the job's progress lines came back
    assert list((storage / "smoke").glob("checkpoint_*/zerotune.json"))


def test_submit_to_a_dead_address_names_it(tmp_path):
    r = subprocess.run(
        [str(BIN / "zerotune"), "submit", "examples/smoke.yaml", "--address", "http://127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "127.0.0.1:1" in r.stderr and "ray start --head" in r.stderr
    assert "Traceback" not in r.stderr

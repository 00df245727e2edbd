"""The cluster path on a real rig on this machine: an S3-compatible server (moto) and a Ray cluster
of a head and worker nodes (`ray.cluster_utils.Cluster`), driven with the real `ray job submit`.

- a 2-trial sweep whose trials run 2 workers each on different nodes, results in the bucket, the
  winner read from the bucket, served from the bucket (after every local copy is removed), held-out
  rows scored through HTTP;
- a worker node killed in the middle of a run: it finishes from the latest checkpoint in the bucket.

Only one Ray runs on the machine at a time: the module shuts the session's Ray down first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.net import free_port
from tests.tiny import make_model, sentiment_rows, write_csv
from trainers.storage import Location

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET = "zt-rig"
CANARY = os.environ["AWS_SECRET_ACCESS_KEY"]  # planted by tests/conftest.py; must never be written anywhere


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port, with one bucket; yields the pyarrow query options."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = Location.parse(f"s3://{BUCKET}?{options}&allow_bucket_creation=true").filesystem()
    fs.create_dir(BUCKET)
    yield options
    server.stop()


@pytest.fixture(scope="module")
def rig(s3, tmp_path_factory):
    """A head (no CPUs: drivers and Serve's controller only) and two 1-CPU worker nodes, so the two
    workers of a trial land on different nodes. Each node has its own temp dir."""
    from ray.cluster_utils import Cluster

    from cluster.connect import shutdown

    shutdown()  # one Ray per machine
    os.environ["PATH"] = f"{BIN}:{os.environ.get('PATH', '')}"  # the job's entrypoint finds `zerotune`
    cache = tmp_path_factory.mktemp("node-cache")
    os.environ["ZEROTUNE_CACHE_DIR"] = str(cache)  # every node's copy of served checkpoints (one machine)
    dashboard = free_port()
    Path("/tmp/ray").mkdir(exist_ok=True)  # Ray records the head's address there whatever temp_dir says
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
        "dashboard_agent_listen_port": free_port(), "temp_dir": tempfile.mkdtemp(prefix="zt-h-", dir="/tmp")})
    workers = [_add_worker(cluster) for _ in range(2)]
    cluster.wait_for_nodes()
    yield {"cluster": cluster, "workers": workers, "jobs": f"http://127.0.0.1:{dashboard}", "cache": cache}
    import ray

    ray.shutdown()
    cluster.shutdown()


def _add_worker(cluster):
    """A 1-CPU worker node with a temp dir of its own, as on a separate machine: nodes sharing the
    head's would share its runtime_env folder, and one node's clean-up would remove the job's cwd."""
    return cluster.add_node(num_cpus=1, resources={"rig_worker": 1},
                            temp_dir=tempfile.mkdtemp(prefix="zt-w-", dir="/tmp"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rig-data")
    return make_model(tmp / "model", "sequence-classification", "bert"), write_csv(tmp / "cls.csv", sentiment_rows(400))


def _spec(tiny, s3: str, *, name: str, port: int, steps: int = 20, tune: bool = True) -> dict:
    model, data = tiny
    doc = {
        "name": name,
        "cluster": {"storage_path": f"s3://{BUCKET}/results?{s3}"},
        "train": {
            "model": {"name_or_path": model, "task": "sequence-classification"},
            "lora": {"enabled": True, "r": 4},
            "data": {"train": data, "validation_fraction": 0.15, "test_fraction": 0.15, "max_length": 24},
            "optim": {"lr": 5e-2},
            "schedule": {"epochs": 100, "max_steps": steps, "micro_batch_size": 16, "eval_every_steps": 10,
                         "log_every_steps": 10},
            "deepspeed": {"zero_stage": 2},
            "scaling": {"num_workers": 2, "max_failures": 2},
        },
        "serve": {"port": port, "num_cpus_per_replica": 0.5},
    }
    if tune:
        doc["tune"] = {"search_space": {"optim.lr": {"type": "grid", "values": [3e-3, 5e-2]}},
                       "scheduler": {"type": "none"}}
    return doc


def _bucket(s3: str, *parts: str) -> Location:
    return Location.parse(f"s3://{BUCKET}/results?{s3}").join(*parts)


def _worker_nodes_per_run() -> dict[str, set[str]]:
    """The nodes each Train run's workers ran on, from Ray's state API (dead actors included)."""
    from ray.util.state import list_actors

    runs: dict[str, set[str]] = {}
    for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000, detail=True):
        runs.setdefault(a.job_id + ":" + str(a.placement_group_id), set()).add(a.node_id)
    return runs


def test_ray_job_submit_sweeps_serves_and_scores_from_the_bucket(rig, s3, tiny, tmp_path):
    import httpx
    import ray

    spec_file = tmp_path / "rig.yaml"
    port = free_port()
    spec_file.write_text(yaml.safe_dump(_spec(tiny, s3, name="rig", port=port)))
    env = dict(os.environ, RAY_ADDRESS=rig["jobs"], RAY_AUTH_MODE="token")
    # Exactly the README's command (the address comes from RAY_ADDRESS).
    started = time.time()
    job = subprocess.run([str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
                          "zerotune", "run", str(spec_file), "--exit"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-6000:]
    assert "held-out test" in out and "TF-IDF" in out, out[-3000:]
    assert CANARY not in out
    job_s = time.time() - started

    # Everything the run wrote is in the bucket, and nothing holds the secret.
    exp = _bucket(s3, "rig")
    files = exp.files()
    for name in ("best.json", "summary.json", "trials.csv", "trials.png", "sweep_spec.json"):
        assert name in files, files
    assert any("/tensorboard/" in f and "tfevents" in f for f in files), "TensorBoard files must reach the bucket"
    for f in files:
        assert CANARY.encode() not in exp.join(*f.split("/")).read_bytes(), f

    from cluster.pipeline import RunSummary
    from tuning.sweep import read_winner

    winner = read_winner(exp)
    summary = RunSummary.model_validate_json(exp.join("summary.json").read_text())
    assert winner.checkpoint.startswith(f"s3://{BUCKET}/results/rig/runs/") and winner.checkpoint == summary.checkpoint
    assert summary.test_rows > 0 and summary.test_metrics and summary.baseline_metrics

    # Each trial's two workers ran on two different nodes.
    ray.init(address=rig["cluster"].address, logging_level="ERROR")
    try:
        per_run = [nodes for nodes in _worker_nodes_per_run().values()]
        assert len(per_run) >= 2 and all(len(nodes) == 2 for nodes in per_run), per_run

        # Serve again from the bucket alone: the app gone, every node's cached copy removed.
        from ray import serve

        serve.delete("zerotune")
        shutil.rmtree(rig["cache"], ignore_errors=True)
        served = subprocess.run([str(BIN / "zerotune"), "serve", str(spec_file), f"serve.port={port}", "--detach"],
                                cwd=tmp_path, env=dict(os.environ, RAY_ADDRESS=rig["cluster"].address),
                                capture_output=True, text=True, timeout=300)
        assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"inputs": ["good great fun", "bad awful"]},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert [x[0]["label"] for x in r.json()["results"]] == ["pos", "neg"]
        # The replica served the bucket's bytes: its node-local copy came from the winner's URI.
        copies = [p for p in Path(rig["cache"]).iterdir() if (p / ".zerotune-complete").is_file()]
        assert [p.joinpath(".zerotune-complete").read_text() for p in copies] == [winner.checkpoint]
        served_weights = next(copies[0].glob("model/*.safetensors"))
        in_bucket = Location.parse(winner.checkpoint).join("model", served_weights.name).read_bytes()
        assert served_weights.read_bytes() == in_bucket
        assert not (copies[0] / "state").exists()  # the servable part only
        serve.delete("zerotune")
    finally:
        ray.shutdown()
    print(f"\nrig run: job {job_s:.0f}s; served macro-F1 {summary.test_metrics['macro_f1']:.4f} vs TF-IDF "
          f"{summary.baseline_metrics['macro_f1']:.4f} on {summary.test_rows} rows; {summary.seconds}")


def test_a_lost_worker_node_resumes_from_the_latest_checkpoint_in_the_bucket(rig, s3, tiny):
    import ray
    from ray.util.state import list_actors

    from cluster.loader import validate_doc
    from trainers.launch import fit

    spec = validate_doc(_spec(tiny, s3, name="node-lost", port=free_port(), steps=120, tune=False))
    run = _bucket(s3, "node-lost")
    snapshot = run.join("checkpoint_manager_snapshot.json")  # Ray Train's record of registered checkpoints
    cluster = rig["cluster"]
    killed: dict = {}

    def registered() -> int:
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):
            return 0
        return int(latest.get("checkpoint_dir_name", "checkpoint_0").split("_")[1])

    def kill_a_worker_node() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and registered() < 20:
            time.sleep(0.2)
        killed["registered"] = registered()
        alive = [a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                                          ("state", "=", "ALIVE")])]
        node = next((n for n in cluster.worker_nodes if n.node_id in alive), None)
        if node is None:
            return
        cluster.remove_node(node, allow_graceful=False)  # the machine is gone, with its local disk
        killed["node"] = node.node_id

    # A spare node for the restart, as an autoscaler would bring one back (ray.cluster_utils starts
    # nodes from the main thread only, so it is added before the run rather than after the loss).
    _add_worker(cluster)
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        killer = threading.Thread(target=kill_a_worker_node, daemon=True)
        killer.start()
        result = fit(spec.train, storage_path=spec.cluster.storage_path, name="node-lost")
        killer.join(timeout=10)
    finally:
        ray.shutdown()
    assert killed.get("node"), f"no worker node was killed ({killed})"
    assert result.final.step == 120
    # Resumed from the bucket, losing less than one checkpoint interval (10 steps).
    lost = killed["registered"] + 10 - result.final.resumed_from_step
    assert result.final.resumed_from_step >= killed["registered"] >= 20, (result.final, killed)
    assert result.latest_checkpoint.startswith(f"s3://{BUCKET}/")
    from serving.app import checked_checkpoint

    checked_checkpoint(result.latest_checkpoint)  # the final checkpoint is servable
    print(f"\nnode lost after checkpoint {killed['registered']}; resumed from step "
          f"{result.final.resumed_from_step}; at most {lost} steps recomputed")

"""The spec's cluster description autoscales: on Ray's fake autoscaling cluster, with node types
derived from `cluster:` by cluster.render, worker nodes are added while trials wait for GPUs and
removed once they sit idle for `cluster.idle_timeout_minutes`.

The fake cluster runs in a subprocess (this file, run as a script) on its own temp dir and ports,
so it never meets the session-wide local Ray the other integration tests share, and it is torn
down (only its own processes) even when the test fails or times out.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.net import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TMP_ENV = "ZEROTUNE_AUTOSCALING_TMP"
CHILD_BUDGET_S = 150  # the script's own deadline; the test waits a little longer, then cleans up itself
TEST_TIMEOUT_S = 180

# A GPU cluster in miniature: a CPU-only head, and GPU workers the autoscaler adds on demand.
SPEC = {
    "name": "autoscale",
    "cluster": {
        "head": {"cpus": 1},
        "worker_types": {"gpu": {"cpus": 1, "gpus": 1, "min_workers": 0, "max_workers": 2}},
        "idle_timeout_minutes": 0.1,  # 6 s, so the test sees idle workers go
    },
    "train": {
        "model": {"name_or_path": "tiny", "task": "sequence-classification"},
        "data": {"train": "train.csv"},
        "scaling": {"num_workers": 1, "use_gpu": True, "cpus_per_worker": 1},
    },
}

# Upstream's fake_multi_node/example.yaml, which the ray 2.60 wheel does not ship
# (AutoscalingCluster reads it and fails with FileNotFoundError).
FAKE_BASE = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "available_node_types": {},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}


def test_workers_are_added_while_trials_wait_and_removed_when_idle():
    temp_dir = tempfile.mkdtemp(prefix="zt-as-", dir="/tmp")  # short: Ray's socket paths live under it
    report_path = Path(temp_dir) / "report.json"
    log_path = Path(temp_dir) / "driver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Token auth with a token of its own: the head, its fake workers and the driver share it, and
    # nothing is read from or written to ~/.ray.
    env.update({TMP_ENV: temp_dir, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, __file__, str(report_path)], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=TEST_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output = log_path.read_text(errors="replace")[-6000:]
        assert proc.returncode == 0 and report_path.is_file(), f"driver failed (exit {proc.returncode}):\n{output}"
        report = json.loads(report_path.read_text())
    finally:
        kill_cluster_processes(temp_dir)  # a no-op when the driver cleaned up after itself
        shutil.rmtree(temp_dir, ignore_errors=True)

    # While both trials waited, the cluster was the head alone and neither placement group was ready.
    assert report["while_waiting"] == {"alive_nodes": 1, "ready": [False, False]}
    # The autoscaler added the spec's GPU workers, up to max_workers, and the trials ran on them.
    assert report["scaled_up"]["alive_nodes"] == 3
    assert report["scaled_up"]["gpus"] == 2
    assert len(set(report["trial_nodes"])) == 2 and report["head_node"] not in report["trial_nodes"]
    assert all(r == {"CPU": 1.0, "GPU": 1.0} for r in report["worker_resources"])
    # Once the trials were done, idle workers were removed; the head stayed.
    assert report["scaled_down"]["alive_nodes"] == 1
    assert report["scaled_down"]["seconds"] < 90


# --------------------------------------------------------------------------- the fake cluster




def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry)] = (ppid, cmdline)
    return out


def kill_cluster_processes(temp_dir: str, grace_s: float = 10.0) -> list[int]:
    """Stop the fake cluster started under `temp_dir` and nothing else: the processes whose command
    line names that directory (GCS, raylets, autoscaler, log monitor) and their descendants (agents,
    workers). Never `ray stop`, which would take every Ray on this machine with it."""
    procs = _processes()
    mine = {os.getpid()}
    pid = os.getpid()
    while pid in procs and procs[pid][0] not in (0, pid):  # never this process or its ancestors
        pid = procs[pid][0]
        mine.add(pid)
    targets = {p for p, (_, cmd) in procs.items() if temp_dir in cmd} - mine
    grew = True
    while grew:
        children = {p for p, (ppid, _) in procs.items() if ppid in targets} - mine - targets
        targets |= children
        grew = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in targets:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in targets):
            time.sleep(0.2)
    return sorted(targets)


def _isolated_cluster_class():
    from ray.cluster_utils import AutoscalingCluster

    class IsolatedAutoscalingCluster(AutoscalingCluster):
        """Ray's AutoscalingCluster, made safe to run beside other Ray instances.

        Upstream's start() and shutdown() run `ray stop --force` (every Ray process of this user,
        other test sessions included), `ray start --head` takes fixed ports (6379, 10001, 52365),
        and the config template it reads is missing from the wheel. This one starts the head in its
        own temp dir on free ports and stops only the processes of that temp dir."""

        def __init__(self, *, temp_dir: str, head_resources: dict, worker_node_types: dict, **config_kwargs):
            import ray._private.services

            self._temp_dir = temp_dir
            self._ip = ray._private.services.get_node_ip_address()
            self._port = free_port()
            super().__init__(head_resources, worker_node_types, **config_kwargs)

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = copy.deepcopy(FAKE_BASE)
            config["available_node_types"] = {
                **copy.deepcopy(worker_node_types),
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            }
            config["provider"]["gcs_address"] = f"{self._ip}:{self._port}"  # fake workers join this head
            config.update(config_kwargs)
            return config

        def start(self, _system_config=None, override_env=None) -> str:
            config_path = Path(self._temp_dir) / "autoscaling.json"
            config_path.write_text(json.dumps(self._config))
            head = dict(self._head_resources)
            cmd = [
                str(Path(sys.executable).with_name("ray")), "start", "--head",
                f"--autoscaling-config={config_path}",
                f"--temp-dir={self._temp_dir}",
                f"--port={self._port}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--num-cpus={head.pop('CPU', 0)}",
                f"--num-gpus={head.pop('GPU', 0)}",
            ]
            if "object_store_memory" in head:
                cmd.append(f"--object-store-memory={head.pop('object_store_memory')}")
            if head:
                cmd.append(f"--resources={json.dumps(head)}")
            env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
            subprocess.run(cmd, env=env, check=True, timeout=90, stdout=subprocess.DEVNULL)
            return f"{self._ip}:{self._port}"

        def shutdown(self):
            kill_cluster_processes(self._temp_dir)

    return IsolatedAutoscalingCluster


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_driver(report_path: Path) -> None:
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cluster.loader import validate_doc
    from cluster.render import autoscaling_cluster_args

    started = time.monotonic()

    def left() -> float:
        return max(5.0, CHILD_BUDGET_S - (time.monotonic() - started))

    spec = validate_doc(SPEC)
    args = autoscaling_cluster_args(spec.cluster, object_store_memory=100 * 1024**2)
    cluster = _isolated_cluster_class()(temp_dir=os.environ[TMP_ENV], **args)
    try:
        address = cluster.start()
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)

        def alive():
            return [n for n in ray.nodes() if n["Alive"]]

        head_node = ray.get_runtime_context().get_node_id()
        # Two trials, each reserving what a one-worker GPU trial reserves: {CPU: 1, GPU: 1}.
        pgs = [placement_group([{"CPU": 1, "GPU": 1}]) for _ in range(2)]
        # The observed event: GCS holds both as PENDING (the demand the autoscaler acts on).
        _wait(lambda: all(placement_group_table(pg)["state"] == "PENDING" for pg in pgs), 30,
              "both placement groups to be pending in GCS")
        while_waiting = {"alive_nodes": len(alive()), "ready": [pg.wait(0) for pg in pgs]}

        for pg in pgs:
            if not pg.wait(timeout_seconds=left()):
                raise TimeoutError(f"placement group not ready; alive nodes: {len(alive())}")
        nodes = alive()
        scaled_up = {"alive_nodes": len(nodes), "gpus": ray.cluster_resources().get("GPU", 0)}
        worker_resources = sorted(
            ({k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")} for n in nodes
             if n["NodeID"] != head_node),
            key=str,
        )

        @ray.remote(num_cpus=1, num_gpus=1)
        def trial_step() -> str:
            return ray.get_runtime_context().get_node_id()

        refs = [trial_step.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote() for pg in pgs]
        trial_nodes = ray.get(refs, timeout=left())

        for pg in pgs:
            remove_placement_group(pg)
        done = time.monotonic()
        _wait(lambda: len(alive()) == 1, min(left(), 90), "idle workers to be removed")
        scaled_down = {"alive_nodes": len(alive()), "seconds": round(time.monotonic() - done, 1)}

        report_path.write_text(json.dumps({
            "while_waiting": while_waiting, "scaled_up": scaled_up, "worker_resources": worker_resources,
            "head_node": head_node, "trial_nodes": trial_nodes, "scaled_down": scaled_down,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    run_driver(Path(sys.argv[1]))

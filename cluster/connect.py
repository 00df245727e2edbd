"""The one place that talks to `ray.init`.

No address in the spec and no RAY_ADDRESS: start an embedded local Ray sized to this machine,
its dashboard (when wanted) on loopback. `auto`, `host:port` or `ray://...`: join that cluster.
Calling it again reuses the running connection.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from .config import ClusterSection, ray_runtime_env
from .errors import ConnectError

log = logging.getLogger(__name__)
_started_here = False  # whether this process started the embedded Ray it is connected to

# Worker processes inherit these so nothing reaches for a model hub unless the user allows it.
_PASS_THROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")
# What the console (cluster/output.py) asks of the processes Ray starts: the console feed's name
# and the verbosity (trainers.console reads both there). Set before connect() starts Ray.
_console_env: dict[str, str] = {}
# Ray Train's PreemptionWatcher watches for node drains; an embedded local Ray has no nodes to
# drain, and creating it logs a spurious core_worker ERROR (Ray passes the workers' actor handles
# to an actor with max_restarts=-1; ray-project/ray#53727). Off there, on where nodes come and go.
_EMBEDDED_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def set_console_env(env: dict[str, str]) -> None:
    """Environment for every process Ray starts for this command (cluster/output.py)."""
    _console_env.clear()
    _console_env.update(env)


@dataclass(frozen=True)
class Connection:
    address: str
    embedded: bool
    num_cpus: float
    num_gpus: float
    dashboard_url: str | None

    def __str__(self) -> str:
        where = "embedded local Ray" if self.embedded else f"Ray cluster at {self.address}"
        dash = f", dashboard {self.dashboard_url}" if self.dashboard_url else ""
        return f"{where} ({self.num_cpus:g} CPUs, {self.num_gpus:g} GPUs{dash})"


def connect(cluster: ClusterSection | None = None) -> Connection:
    """Connect to (or start) Ray once per process and describe what we got."""
    import ray

    global _started_here
    cluster = cluster or ClusterSection()
    if not ray.is_initialized():
        address = cluster.address or os.environ.get("RAY_ADDRESS") or None
        runtime_env = _runtime_env(cluster, embedded=address is None)
        # Ray's INFO lines go wherever the console put library output (the run's log file by
        # default, the terminal with -v); workers' output is forwarded to this driver either way.
        if address is None:
            ray.init(
                num_cpus=cluster.num_cpus or os.cpu_count() or 1,
                include_dashboard=cluster.include_dashboard,
                dashboard_host=cluster.dashboard_host,
                runtime_env=runtime_env,
                namespace="zerotune",
                logging_level=logging.INFO,
                log_to_driver=True,
            )
            _started_here = True
        else:
            _check_reachable(address)
            try:
                ray.init(address=address, runtime_env=runtime_env, namespace="zerotune",
                         logging_level=logging.INFO, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise _unreachable(address, err) from None
        _start_console_feed()
    return describe()


def _start_console_feed() -> None:
    from trainers import feed
    from trainers.console import FEED_ENV

    if _console_env.get(FEED_ENV):
        feed.start(_console_env[FEED_ENV])


def _unreachable(address: str, err: Exception) -> ConnectError:
    return ConnectError(
        f"no Ray cluster answers at {address!r} ({err}). Start one with `ray start --head` "
        "(or `ray up cluster.yaml`), fix cluster.address / RAY_ADDRESS, or leave both empty "
        "to run on an embedded local Ray."
    )


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at host:port (ray.init retries long)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://").split("/")[0]
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise _unreachable(address, err) from None


def describe() -> Connection:
    import ray

    res = ray.cluster_resources()
    dash = ray._private.worker.get_dashboard_url() if _started_here else None
    return Connection(
        address=ray.get_runtime_context().gcs_address,
        embedded=_started_here,
        num_cpus=res.get("CPU", 0.0),
        num_gpus=res.get("GPU", 0.0),
        dashboard_url=(dash if dash.startswith("http") else f"http://{dash}") if dash else None,
    )


def _runtime_env(cluster: ClusterSection, *, embedded: bool = False) -> dict | None:
    passed = {k: os.environ[k] for k in _PASS_THROUGH_ENV if k in os.environ}
    passed.update(_console_env)
    if embedded:
        passed.update({k: os.environ.get(k, v) for k, v in _EMBEDDED_ENV.items()})
    return ray_runtime_env(cluster.runtime_env, extra_env=passed) or None


def shutdown() -> None:
    import ray

    from trainers import feed

    global _started_here
    _started_here = False
    feed.stop()
    if ray.is_initialized():
        ray.shutdown()

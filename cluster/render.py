"""Cluster descriptions rendered from the spec: the `cluster:` section is the one source of truth.

`render(spec, provider, spec_path=...)` returns {file name: YAML text}:

- aws, gcp: a Ray cluster-launcher config for `ray up` (head and worker node types with their
  instance types, resources and autoscaling bounds; the container image; setup commands that install
  zerotune on every node; the dashboard on loopback; idle workers removed after
  `cluster.idle_timeout_minutes`).
- kuberay: a RayCluster (autoscaling worker groups), a RayJob that runs `zerotune run <spec>` on a
  cluster of its own (as `python -m cluster.cli run <spec>`: pods get zerotune's dependencies and
  its code through the runtime env's working_dir, not an install), and a RayService whose Serve
  config deploys `serving.app:build_app`.

No Ray cluster starts, no cloud is called and nothing is written here (`write_examples` aside,
which refreshes the rendered examples shipped under cluster/). Problems the spec alone cannot catch
(a GCP render without a project, a Train worker no node type can hold) are collected into one
ConfigError.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import yaml

from serving.config import ServeSection
from trainers.storage import is_uri

from .config import ClusterSection, NodeType, ray_runtime_env
from .errors import ConfigError, UserError
from .spec import ExperimentSpec

Provider = Literal["aws", "gcp", "kuberay"]
PROVIDERS: tuple[str, ...] = get_args(Provider)

RAY_VERSION = importlib.metadata.version("ray")
SERVE_IMPORT_PATH = "serving.app:build_app"  # serving.app.IMPORT_PATH (not imported: rendering stays light)
HEAD_TYPE = "head"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
REMOTE_DIR = "~/zerotune"  # the repository on every launcher node, installed with `pip install -e`
GCP_GPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
GCP_CPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cpu"
WAIT_FOR_GPU = "timeout 300 bash -c 'until nvidia-smi > /dev/null 2>&1; do sleep 5; done'"
GIB_PER_CPU = 4  # KubeRay pod memory when a node type gives no memory_gb

_RAY_IMAGE = re.compile(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")


def render(
    spec: ExperimentSpec,
    provider: Provider | None = None,
    *,
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    checkpoint: str | None = None,
    working_dir: str | None = None,
    command: Literal["run", "tune", "train"] = "run",
) -> dict[str, str]:
    """File name -> YAML text for `provider` (default: `cluster.provider`).

    spec_path: the spec file, relative to the repository root (it is shipped as the working
    directory, so the cluster reads the same file); `overrides` are the `key=value` overrides the
    spec was loaded with, passed on to the job. KubeRay only: `checkpoint` is the checkpoint
    directory the RayService serves (a placeholder when empty); `working_dir` is a URI (https://,
    s3://, gs://) of a zip of this repository (default: <storage_path>/<name>/zerotune.zip);
    `command` is what the RayJob runs (`zerotune run|tune|train <spec>`, via `python -m cluster.cli`).
    """
    target = _target(spec, provider, str(spec_path))
    path = relative_spec_path(spec_path)
    base = k8s_name(spec.name)
    invocation = f"zerotune cluster render {path} --provider {target}"
    if target in ("aws", "gcp"):
        doc = launcher_config(spec, target, spec_path=path)
        return {f"{base}.yaml": _dump(doc, _launcher_header(spec, target, path, overrides, invocation))}
    docs = kuberay_manifests(
        spec, spec_path=path, overrides=overrides, checkpoint=checkpoint, working_dir=working_dir, command=command
    )
    wd = working_dir or default_working_dir(spec)
    return {
        f"{base}-{kind.lower()}.yaml": _dump(doc, _kuberay_header(spec, kind, base, invocation, wd, doc))
        for kind, doc in docs.items()
    }


# --------------------------------------------------------------------------- names and checks


def k8s_name(name: str, limit: int = 40) -> str:
    """A DNS-1035 label from a spec name (Kubernetes objects, GCP instance names): lowercase
    letters, digits and '-', starting with a letter. KubeRay appends suffixes, hence the limit."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = f"zt-{out}"
    return out[:limit].rstrip("-")


def relative_spec_path(spec_path: str | Path) -> str:
    """The spec's path inside the working directory shipped to the cluster, in POSIX form."""
    p = Path(spec_path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            raise UserError(
                f"{spec_path}: the spec must sit inside the directory shipped to the cluster; run from the "
                "repository root and name it by a relative path (e.g. examples/exp.yaml)"
            ) from None
    posix = PurePosixPath(p.as_posix())
    if ".." in posix.parts:
        raise UserError(f"{spec_path}: name the spec by a path inside the repository root (no '..')")
    return str(posix)


def _target(spec: ExperimentSpec, provider: str | None, source: str) -> str:
    target = provider or spec.cluster.provider
    if target not in PROVIDERS:
        raise ConfigError(
            source,
            [f"cluster.provider: got {target!r}; rendering needs one of {', '.join(PROVIDERS)} "
             "(set cluster.provider or pass --provider)"],
        )
    return target


def _per_cloud(value: str | dict[str, str] | None, field: str, cloud: str, declared: str,
               problems: list[str], *, required: bool) -> str | None:
    """The value of a cloud-specific field for `cloud`: one name (for the spec's own provider, or
    any cloud when the spec names none), or the entry for `cloud` in a per-cloud mapping."""
    if isinstance(value, dict):
        picked = value.get(cloud)
        if picked is None and required:
            problems.append(f"{field}: has no entry for {cloud} (got {sorted(value)}); add `{cloud}: ...`")
        return picked
    if value is not None and declared in ("aws", "gcp") and declared != cloud:
        problems.append(
            f"{field}: {value!r} is for cluster.provider {declared!r}; to render for {cloud} too, give one per "
            f"cloud, e.g. {{{declared}: {value}, {cloud}: ...}}"
        )
        return None
    if value is None and required:
        problems.append(f"{field}: required to render for {cloud}")
    return value


def _ray_version_problems(image: str) -> list[str]:
    m = _RAY_IMAGE.match(image)
    if m and m.group(1) != RAY_VERSION:
        return [f"cluster.image: {image!r} runs Ray {m.group(1)} but zerotune uses Ray {RAY_VERSION}; "
                f"use rayproject/ray:{RAY_VERSION}-py311 (or its -gpu tag)"]
    return []


def _fit_problems(spec: ExperimentSpec) -> list[str]:
    """A Train worker and a Serve replica must each fit on some node type, or they wait forever."""
    c = spec.cluster
    nodes = [("cluster.head", c.head), *((f"cluster.worker_types.{k}", v) for k, v in c.worker_types.items())]

    def fits(cpus: float, gpus: float) -> bool:
        return any(n.cpus >= cpus and n.gpus >= gpus for _, n in nodes)

    problems = []
    s = spec.train.scaling
    gpus = s.gpus_per_worker if s.use_gpu else 0.0
    if not fits(s.cpus_per_worker, gpus):
        problems.append(
            f"train.scaling: a Train worker needs {s.cpus_per_worker:g} CPU and {gpus:g} GPU, but no node type "
            f"offers that ({_offers(nodes)}); lower train.scaling.cpus_per_worker or add a bigger worker type"
        )
    serve = spec.serve
    if serve is not None and not fits(serve.num_cpus_per_replica, serve.num_gpus_per_replica):
        problems.append(
            f"serve: a replica needs {serve.num_cpus_per_replica:g} CPU and {serve.num_gpus_per_replica:g} GPU, "
            f"but no node type offers that ({_offers(nodes)})"
        )
    return problems


def _offers(nodes: list[tuple[str, NodeType]]) -> str:
    return "; ".join(f"{path}: {n.cpus} CPU, {n.gpus} GPU" for path, n in nodes)


def _resources(node: NodeType) -> dict[str, int]:
    res = {"CPU": node.cpus}
    if node.gpus:
        res["GPU"] = node.gpus
    return res


def _node_types(cluster: ClusterSection, node_config: Callable[[str, NodeType], dict[str, Any]],
                *, with_head: bool = True) -> dict[str, dict[str, Any]]:
    """Autoscaler node types (resources, bounds, provider node_config) from cluster.head/worker_types;
    shared by the launcher YAML and the fake autoscaling cluster of the tests."""
    def entry(path: str, node: NodeType, low: int, high: int) -> dict[str, Any]:
        return {"resources": _resources(node), "node_config": node_config(path, node),
                "min_workers": low, "max_workers": high}

    types = {HEAD_TYPE: entry("cluster.head", cluster.head, 0, 0)} if with_head else {}
    for name, node in cluster.worker_types.items():
        types[name] = entry(f"cluster.worker_types.{name}", node, node.min_workers, node.max_workers)
    return types


def max_workers(cluster: ClusterSection) -> int:
    """Worker nodes at full scale (the launcher's global max_workers)."""
    return sum(n.max_workers for n in cluster.worker_types.values())


def autoscaling_cluster_args(cluster: ClusterSection, *, object_store_memory: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `ray.cluster_utils.AutoscalingCluster` with the node types, bounds and
    idle timeout the launcher YAML gets, so a test can watch the same description autoscale locally."""
    workers = _node_types(cluster, lambda _path, _node: {}, with_head=False)
    head = dict(_resources(cluster.head))
    if object_store_memory is not None:
        head["object_store_memory"] = object_store_memory
        for t in workers.values():
            t["resources"]["object_store_memory"] = object_store_memory
    return {
        "head_resources": head,
        "worker_node_types": workers,
        "idle_timeout_minutes": cluster.idle_timeout_minutes,
        "max_workers": max_workers(cluster),
    }


# --------------------------------------------------------------------------- Ray cluster launcher


def launcher_config(spec: ExperimentSpec, provider: Literal["aws", "gcp"], *, spec_path: str) -> dict[str, Any]:
    """A Ray cluster-launcher config (`ray up`) for aws or gcp."""
    c = spec.cluster
    problems: list[str] = []
    region = _per_cloud(c.region, "cluster.region", provider, c.provider, problems, required=True)
    zone = _per_cloud(c.availability_zone, "cluster.availability_zone", provider, c.provider, problems,
                      required=provider == "gcp")
    vm_image = _per_cloud(c.vm_image, "cluster.vm_image", provider, c.provider, problems, required=False)

    def node_config(path: str, node: NodeType) -> dict[str, Any]:
        itype = _per_cloud(node.instance_type, f"{path}.instance_type", provider, c.provider, problems,
                           required=True)
        if provider == "aws":
            if node.accelerator_type:
                problems.append(f"{path}.accelerator_type: GCP only; AWS instance types bring their GPUs")
            return _aws_node_config(node, itype, vm_image)
        return _gcp_node_config(node, itype, vm_image)

    node_types = _node_types(c, node_config)
    if provider == "aws":
        provider_block: dict[str, Any] = {"type": "aws", "region": region}
        if zone:
            provider_block["availability_zone"] = zone
        provider_block["cache_stopped_nodes"] = False  # terminate idle nodes: stopped GPU VMs still bill disks
    else:
        if not c.project_id:
            problems.append("cluster.project_id: required to render for gcp")
        provider_block = {"type": "gcp", "region": region, "availability_zone": zone, "project_id": c.project_id}
        for name, node in c.worker_types.items():  # the head uses the global initialization_commands
            node_types[name]["initialization_commands"] = [WAIT_FOR_GPU] if node.gpus else []
    problems += _ray_version_problems(c.image) + _fit_problems(spec)
    if problems:
        raise ConfigError(spec_path, problems)

    doc: dict[str, Any] = {
        "cluster_name": k8s_name(spec.name),
        "max_workers": max_workers(c),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": c.idle_timeout_minutes,
        "provider": provider_block,
        "auth": {"ssh_user": "ubuntu"},
        "docker": {
            "image": c.image,
            "container_name": "ray_container",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"],
        },
        "head_node_type": HEAD_TYPE,
        "available_node_types": node_types,
        # The repository root (one directory: Docker bind mounts of single files go stale), less what
        # git ignores (.venv, results) and .git itself.
        "file_mounts": {REMOTE_DIR: "."},
        "rsync_exclude": ["**/.git", "**/.git/**"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [WAIT_FOR_GPU] if provider == "gcp" and c.head.gpus else [],
        "setup_commands": [*c.setup_commands, f"pip install -e {REMOTE_DIR}"],
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; ray start --head --port={GCS_PORT} --object-manager-port=8076 "
            f"--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host={c.dashboard_host}",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; ray start --address=$RAY_HEAD_IP:{GCS_PORT} --object-manager-port=8076",
        ],
    }
    return doc


def _aws_node_config(node: NodeType, instance_type: str | None, image: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "InstanceType": instance_type,
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": node.disk_size_gb, "VolumeType": "gp3"}}
        ],
    }
    if image:
        cfg["ImageId"] = image
    if node.spot:
        cfg["InstanceMarketOptions"] = {"MarketType": "spot"}
    return cfg


def _gcp_node_config(node: NodeType, machine_type: str | None, image: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "machineType": machine_type,
        "disks": [{
            "boot": True,
            "autoDelete": True,
            "type": "PERSISTENT",
            "initializeParams": {
                "diskSizeGb": node.disk_size_gb,
                "sourceImage": image or (GCP_GPU_IMAGE if node.gpus else GCP_CPU_IMAGE),
            },
        }],
    }
    scheduling: dict[str, Any] = {}
    if node.gpus:
        if node.accelerator_type:
            cfg["guestAccelerators"] = [{"acceleratorType": node.accelerator_type, "acceleratorCount": node.gpus}]
        cfg["metadata"] = {"items": [{"key": "install-nvidia-driver", "value": "True"}]}
        scheduling["onHostMaintenance"] = "TERMINATE"  # GPU VMs cannot live-migrate
    if node.spot:
        scheduling.update(provisioningModel="SPOT", instanceTerminationAction="DELETE", automaticRestart=False,
                          onHostMaintenance="TERMINATE")
    if scheduling:
        cfg["scheduling"] = scheduling
    return cfg


def _launcher_header(spec: ExperimentSpec, provider: str, path: str, overrides: Sequence[str],
                     invocation: str) -> list[str]:
    job = shlex.join(["zerotune", "run", path, *overrides])
    lines = [
        f"Ray cluster launcher config for {provider}, rendered from {path} (its cluster: section)",
        f"by `{invocation}`. Do not edit: change the spec and render again.",
        "",
        f"Usage (from the repository root, which is synced to {REMOTE_DIR} on every node, less what git",
        "ignores, and installed there with `pip install -e`):",
        "  ray up -y <this file>",
        "  ray dashboard <this file>     # the dashboard listens on the head's loopback; this tunnels it",
        f"  RAY_ADDRESS=http://127.0.0.1:{DASHBOARD_PORT} ray job submit --working-dir . -- {job}",
        "  ray down -y <this file>",
        f"Idle worker nodes are removed after {spec.cluster.idle_timeout_minutes:g} minutes "
        "(cluster.idle_timeout_minutes).",
    ]
    return lines + _storage_note(spec)


def _storage_note(spec: ExperimentSpec) -> list[str]:
    if is_uri(spec.cluster.storage_path) or not spec.cluster.worker_types:
        return []
    return [f"NOTE: cluster.storage_path {spec.cluster.storage_path!r} is a local path; every node must reach it",
            "(a shared mount), or use s3:// / gs://."]


# --------------------------------------------------------------------------- KubeRay


def zerotune_requirements() -> list[str]:
    """zerotune's runtime dependencies (pyproject.toml), less Ray, which the image brings."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        import tomllib

        deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    except (ImportError, OSError, KeyError):  # Python 3.10, or installed without the source tree
        deps = [r for r in importlib.metadata.requires("zerotune") or [] if "extra ==" not in r]
    return [d for d in deps if not re.match(r"^ray\b", d)]


def kuberay_manifests(
    spec: ExperimentSpec,
    *,
    spec_path: str,
    overrides: Sequence[str] = (),
    checkpoint: str | None = None,
    working_dir: str | None = None,
    command: Literal["run", "tune", "train"] = "run",
) -> dict[str, dict[str, Any]]:
    """{"RayCluster": ..., "RayJob": ..., "RayService": ...} manifests (ray.io/v1)."""
    c = spec.cluster
    problems = _ray_version_problems(c.image) + _fit_problems(spec)
    storage = c.storage_path.rstrip("/")
    if working_dir is not None and not is_uri(working_dir):
        problems.append(f"working_dir: got {working_dir!r}; KubeRay pods fetch the code from a URI "
                        "(https://, s3://, gs://) of a zip of the repository")
    elif working_dir is None and not is_uri(default_working_dir(spec)):
        problems.append(
            f"cluster.storage_path: {c.storage_path!r} is local, and KubeRay pods fetch the code from a URI: pass "
            "working_dir (--working-dir s3://.../zerotune.zip) or set cluster.storage_path to s3:// or gs://"
        )
    working_dir = working_dir or default_working_dir(spec)
    if problems:
        raise ConfigError(spec_path, problems)

    name = k8s_name(spec.name)
    serve = spec.serving
    env = _secret_env(name, serve)
    cluster_spec = _raycluster_spec(c, serve, env)
    runtime_env = ray_runtime_env(c.runtime_env, working_dir=working_dir)
    entrypoint = shlex.join(["python", "-m", "cluster.cli", command, spec_path, *overrides])

    raycluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name},
                  "spec": cluster_spec}
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"{name}-job"},
        "spec": {
            "entrypoint": entrypoint,
            "runtimeEnvYAML": _yaml_text(runtime_env),
            "shutdownAfterJobFinishes": True,  # GPU pods go when the job ends; results stay in storage_path
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": cluster_spec,
        },
    }
    serve_config = {
        "http_options": {"host": "0.0.0.0", "port": serve.port},  # inside the pod; the Service stays ClusterIP
        # No controller_options (serving/proxy.py's JSON bodies for the proxy's own 404/503s): the
        # proxies would import serving.proxy, which these pods get only through the apps'
        # working_dir, and Serve's controller takes env_vars alone. Replicas' errors stay JSON.
        "applications": [{
            "name": serve.app_name,
            "route_prefix": serve.route_prefix,
            "import_path": SERVE_IMPORT_PATH,
            "runtime_env": runtime_env,
            "args": {
                "checkpoint": checkpoint or f"<checkpoint directory: see {storage}/{spec.name}/best.json>",
                "serve": serve.model_dump(mode="json", exclude_defaults=True),
            },
        }],
    }
    rayservice = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"{name}-serve"},
        "spec": {"serveConfigV2": _yaml_text(serve_config), "rayClusterConfig": cluster_spec},
    }
    return {"RayCluster": raycluster, "RayJob": rayjob, "RayService": rayservice}


def default_working_dir(spec: ExperimentSpec) -> str:
    """Where KubeRay pods fetch the code when no working_dir is given: a zip beside the results."""
    return f"{spec.cluster.storage_path.rstrip('/')}/{spec.name}/zerotune.zip"


def _secret_env(name: str, serve: ServeSection) -> list[dict[str, Any]]:
    """Secrets come from a Kubernetes Secret `<name>-secrets`, never from the spec: a Hugging Face
    token for gated models (optional) and the endpoint's bearer token when serve.auth_token_env is set."""
    secret = f"{name}-secrets"
    env = [{"name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "hf-token", "optional": True}}}]
    if serve.auth_token_env:
        env.append({"name": serve.auth_token_env,
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": "serve-token"}}})
    return env


def _setup_command(cluster: ClusterSection) -> str:
    """Runs in every pod before the `ray start` KubeRay generates (it appends `&& ulimit ...; ray start`)."""
    pip = shlex.join(["pip", "install", "--no-cache-dir", *zerotune_requirements()])
    return " && ".join([*cluster.setup_commands, pip])


def _pod_resources(node: NodeType) -> dict[str, dict[str, str]]:
    memory = node.memory_gb if node.memory_gb is not None else GIB_PER_CPU * node.cpus
    amount = {"cpu": str(node.cpus),
              "memory": f"{int(memory)}Gi" if float(memory).is_integer() else f"{round(memory * 1024)}Mi"}
    if node.gpus:
        amount["nvidia.com/gpu"] = str(node.gpus)
    return {"requests": dict(amount), "limits": dict(amount)}  # requests = limits, as Ray recommends


def _container(role: str, cluster: ClusterSection, node: NodeType, env: list[dict[str, Any]],
               ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": cluster.image,
        "command": [_setup_command(cluster)],
        "resources": _pod_resources(node),
        "env": env,
    }
    if ports:
        container["ports"] = ports
    return container


def _pod_spec(container: dict[str, Any], node: NodeType) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if node.gpus:  # GPU node pools are usually tainted so that only GPU pods land there
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _raycluster_spec(c: ClusterSection, serve: ServeSection, env: list[dict[str, Any]]) -> dict[str, Any]:
    ports = [
        {"containerPort": GCS_PORT, "name": "gcs-server"},
        {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
        {"containerPort": CLIENT_PORT, "name": "client"},
        {"containerPort": serve.port, "name": "serve"},
    ]
    head = _container("head", c, c.head, env, ports)
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": round(c.idle_timeout_minutes * 60)},
        "headGroupSpec": {
            # The operator submits jobs and Serve configs through the dashboard, so it listens on the
            # pod's address; the head Service is ClusterIP (inside the cluster only).
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {"spec": _pod_spec(head, c.head)},
        },
        "workerGroupSpecs": [
            {
                "groupName": group,
                "replicas": node.min_workers,
                "minReplicas": node.min_workers,
                "maxReplicas": node.max_workers,
                "rayStartParams": {},
                "template": {"spec": _pod_spec(_container("worker", c, node, env), node)},
            }
            for group, node in c.worker_types.items()
        ],
    }


def _kuberay_header(spec: ExperimentSpec, kind: str, name: str, invocation: str, working_dir: str,
                    doc: dict[str, Any]) -> list[str]:
    port = spec.serving.port
    serve_token = spec.serve is not None and spec.serve.auth_token_env is not None
    lines = [
        f"KubeRay {kind} (ray.io/v1), rendered from the spec's cluster: section by",
        f"`{invocation}`. Do not edit: change the spec and render again.",
        "",
        "Usage (a KubeRay operator runs in the Kubernetes cluster):",
    ]
    if serve_token:
        lines += [f"  kubectl create secret generic {name}-secrets --from-literal=serve-token=<bearer token> \\",
                  "      [--from-literal=hf-token=<token, for gated hub models>]"]
    else:
        lines += [f"  kubectl create secret generic {name}-secrets --from-literal=hf-token=<token>  # optional: gated models"]
    if kind != "RayCluster":
        lines += [
            "  git archive --format=zip --prefix=zerotune/ HEAD -o zerotune.zip   # the code: one top-level dir",
            f"  (upload zerotune.zip to {working_dir}, the runtime env's working_dir)",
        ]
    lines.append("  kubectl apply -f <this file>")
    if kind == "RayCluster":
        lines += [f"  kubectl port-forward svc/{name}-head-svc {DASHBOARD_PORT}:{DASHBOARD_PORT}",
                  f"  RAY_ADDRESS=http://127.0.0.1:{DASHBOARD_PORT} ray job submit --working-dir . -- "
                  "python -m cluster.cli run <spec>"]
    elif kind == "RayJob":
        lines.append(f"  kubectl get rayjob {doc['metadata']['name']}   # runs: {doc['spec']['entrypoint']}")
    else:
        lines += ["  (args.checkpoint must be a checkpoint directory the pods can read: render with --checkpoint)",
                  f"  kubectl port-forward svc/{doc['metadata']['name']}-serve-svc {port}:{port}"]
    lines += [
        "Pods install zerotune's dependencies (pyproject.toml) before Ray starts; bake them into",
        "cluster.image to start faster. Idle worker pods are removed after "
        f"{spec.cluster.idle_timeout_minutes:g} minutes (cluster.idle_timeout_minutes).",
    ]
    return lines


# --------------------------------------------------------------------------- YAML text


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # the same env list in every pod: spell it out each time
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml_text(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1_000_000)


def _dump(doc: dict[str, Any], header: list[str]) -> str:
    comment = "\n".join(f"# {line}".rstrip() for line in header)
    return f"{comment}\n{_yaml_text(doc)}"


# --------------------------------------------------------------------------- shipped examples

_ROOT = Path(__file__).resolve().parents[1]


def example_renders(root: Path = _ROOT) -> dict[Path, str]:
    """What cluster/<provider>/ should hold: every provider's files for every example under
    examples/ that describes worker node types. (Reads the examples; writes nothing.)"""
    from .loader import load_spec

    out: dict[Path, str] = {}
    for path in sorted((root / "examples").glob("*.yaml")):
        spec = load_spec(path)
        if not spec.cluster.worker_types:
            continue
        rel = path.relative_to(root).as_posix()
        for provider in PROVIDERS:
            for fname, text in render(spec, provider, spec_path=rel).items():  # type: ignore[arg-type]
                out[root / "cluster" / provider / fname] = text
    return out


def write_examples(root: Path = _ROOT) -> list[Path]:
    """Refresh cluster/<provider>/ from the examples: `python -m cluster.render`."""
    written = []
    for path, text in example_renders(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_examples():
        print(f"wrote {p.relative_to(_ROOT)}")

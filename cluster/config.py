"""The `cluster:` section: where the job runs, where results go, and the node types a cloud
cluster is rendered from (Ray cluster launcher YAML or KubeRay manifests)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from trainers.config import Section
from trainers.errors import looks_secret

Cloud = Literal["aws", "gcp"]
CLOUDS: tuple[str, ...] = get_args(Cloud)


def _one_per_cloud(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message instead of one per union branch (`str` and `dict[...]`)."""
    try:
        return handler(value)
    except ValidationError:
        if isinstance(value, dict):
            bad = [k for k in value if k not in CLOUDS]
            what = f"unknown cloud {bad[0]!r}" if bad else "every value must be a string"
        else:
            what = f"must be a string or a mapping, not a {type(value).__name__}"
        raise ValueError(
            f"{what}; give one name, or one per cloud ({', '.join(CLOUDS)}), e.g. {{aws: g5.2xlarge, gcp: g2-standard-8}}"
        ) from None


# A cloud-specific name: one string (for the cloud in `cluster.provider`), or one per cloud so the
# same spec renders for both, e.g. {aws: g5.2xlarge, gcp: g2-standard-8}.
PerCloud = Annotated[str | dict[Cloud, str], WrapValidator(_one_per_cloud)]

_NODE_TYPE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,29}$")


class NodeType(Section):
    instance_type: PerCloud | None = Field(
        default=None,
        description="Cloud machine type: AWS InstanceType or GCP machineType (e.g. g5.2xlarge, g2-standard-8). "
        "One name, or one per cloud: {aws: g5.2xlarge, gcp: g2-standard-8}. Required to render for aws/gcp; "
        "KubeRay sizes pods from cpus/gpus/memory_gb instead.",
    )
    cpus: int = Field(default=8, ge=1, description="CPUs the node offers to Ray.")
    gpus: int = Field(default=0, ge=0, description="GPUs the node offers to Ray.")
    memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="Host memory of the node in GiB: a KubeRay pod's request = limit (empty: 4 GiB per CPU), and "
        "what `zerotune plan` checks workers' host RAM (CPU runs, offload) against.",
    )
    gpu_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="Memory of one GPU in GiB, as nvidia-smi reports it (A10G, L4: 22.5; A100: 40 or 80; H100: 80). "
        "`zerotune plan` checks each worker's GPU memory against it.",
    )
    min_workers: int = Field(default=0, ge=0, description="Autoscaler floor (worker types only).")
    max_workers: int = Field(default=0, ge=0, description="Autoscaler ceiling (worker types only).")
    accelerator_type: str | None = Field(
        default=None,
        description="GCP only: GPU model attached to machine types without built-in GPUs (n1-*), e.g. "
        "nvidia-tesla-t4; `gpus` of them per node. AWS instance types and GCP a2/a3/g2 types bring their GPUs.",
    )
    disk_size_gb: int = Field(
        default=200, ge=20, description="Boot disk of a cloud VM (image, pip cache, Hugging Face cache)."
    )
    spot: bool = Field(
        default=False,
        description="Run this type on spot/preemptible VMs (aws/gcp). Training survives a preemption by "
        "restarting from the latest checkpoint (train.scaling.max_failures).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> NodeType:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})")
        if self.accelerator_type is not None and self.gpus == 0:
            raise ValueError(f"accelerator_type {self.accelerator_type!r} needs gpus >= 1 (how many to attach)")
        if self.gpu_memory_gb is not None and self.gpus == 0:
            raise ValueError(f"gpu_memory_gb {self.gpu_memory_gb:g} needs gpus >= 1 (it is the memory of one GPU)")
        return self


class RuntimeEnvSection(Section):
    pip: list[str] = Field(default_factory=list, description="Extra pip packages installed on every node.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Non-secret environment variables for every worker."
    )

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        # Names only: the message must never carry a value (the loader hides them too).
        bad = [k for k in v if looks_secret(k)]
        if bad:
            raise ValueError(
                f"env_vars {', '.join(bad)} look like secrets; specs are saved with checkpoints. "
                "Set secrets in the cluster's environment instead"
            )
        return v


def ray_runtime_env(env: RuntimeEnvSection, *, working_dir: str | None = None, excludes: list[str] | None = None,
                    extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Ray runtime_env dict for the spec's `cluster.runtime_env` (the one builder: ray.init, job
    submission and the rendered KubeRay manifests all use it). `extra_env` comes first, so the spec wins."""
    out: dict[str, Any] = {}
    if working_dir is not None:
        out["working_dir"] = working_dir
    if excludes:
        out["excludes"] = list(excludes)
    if env.pip:
        out["pip"] = list(env.pip)
    env_vars = {**(extra_env or {}), **env.env_vars}
    if env_vars:
        out["env_vars"] = env_vars
    return out


class ClusterSection(Section):
    address: str | None = Field(
        default=None,
        description="Ray cluster to join: 'auto', 'ray://host:10001' or host:port. Empty (and no "
        "RAY_ADDRESS): start an embedded local Ray on this machine.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs for an embedded local Ray; empty: all of this machine's."
    )
    include_dashboard: bool = Field(
        default=True,
        description="Start the Ray dashboard (embedded Ray only). Ray Train relies on its state API to release a "
        "stopped trial's workers, so leave it on unless you know you do not need it.",
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Dashboard bind address of an embedded Ray and of rendered cluster-launcher heads; loopback by "
        "default (reach a cloud head's with `ray dashboard cluster.yaml`, an SSH tunnel).",
    )
    storage_path: str = Field(
        default="~/zerotune_results",
        description="Where runs, checkpoints and reports go: a local directory (one node), or s3:// / gs:// "
        "(shared by every node).",
    )
    runtime_env: RuntimeEnvSection = Field(
        default_factory=RuntimeEnvSection, description="What every node gets (pip packages, env vars)."
    )
    provider: Literal["local", "aws", "gcp", "kuberay"] = Field(
        default="local", description="Where `zerotune cluster render` targets by default."
    )
    region: PerCloud | None = Field(
        default=None,
        description="Cloud region: one name, or one per cloud ({aws: us-west-2, gcp: us-central1}). "
        "Required to render for aws/gcp.",
    )
    availability_zone: PerCloud | None = Field(
        default=None,
        description="Zone(s) nodes start in: AWS a comma-separated list (empty: any in the region); GCP one zone, "
        "required to render for gcp (e.g. {gcp: us-central1-a}).",
    )
    project_id: str | None = Field(default=None, description="GCP project id (required to render for gcp).")
    vm_image: PerCloud | None = Field(
        default=None,
        description="Boot image of cloud VMs (AWS ImageId, GCP sourceImage). Empty: Ray's default AMI (Deep "
        "Learning AMI with NVIDIA drivers and Docker) on AWS; on GCP a Deep Learning VM image (CUDA family "
        "with the NVIDIA driver installed at boot for GPU nodes, common-cpu otherwise).",
    )
    image: str = Field(
        default="rayproject/ray:2.60.0-py311",
        description="Container image for every node; its Ray must match zerotune's (use a -gpu tag for GPU nodes).",
    )
    setup_commands: list[str] = Field(
        default_factory=list,
        description="Shell commands run on each node before Ray starts (before zerotune's own dependencies "
        "are installed).",
    )
    head: NodeType = Field(default_factory=NodeType, description="The head node (no min/max_workers).")
    worker_types: dict[str, NodeType] = Field(
        default_factory=dict,
        description="Worker node types by name (lowercase letters, digits, '-'), each with autoscaling bounds.",
    )
    idle_timeout_minutes: float = Field(
        default=5.0,
        ge=0.0,
        description="The autoscaler removes a worker node idle this long (e.g. GPU nodes once a search ends).",
    )

    @field_validator("worker_types")
    @classmethod
    def _worker_type_names(cls, v: dict[str, NodeType]) -> dict[str, NodeType]:
        problems = []
        for name, node in v.items():
            if not _NODE_TYPE_NAME.match(name) or name == "head":
                problems.append(
                    f"worker type name {name!r} must be lowercase letters, digits and '-', start with a letter, "
                    "at most 30 characters, and not 'head' (it names cloud labels and Kubernetes pods)"
                )
            elif node.max_workers < 1:
                problems.append(f"worker type {name!r} has max_workers 0 and would never start; set max_workers >= 1")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _head_is_not_a_worker_type(self) -> ClusterSection:
        if self.head.min_workers or self.head.max_workers:
            raise ValueError(
                "cluster.head: min_workers/max_workers apply to worker types only; the head is always one node"
            )
        return self

    @field_validator("address")
    @classmethod
    def _address_shape(cls, v: str | None) -> str | None:
        if v is None or v == "auto" or v.startswith("ray://") or ":" in v:
            return v
        raise ValueError(f"address must be 'auto', 'ray://host:port' or 'host:port'; got {v!r}")

    @property
    def max_gpus(self) -> int | None:
        """GPUs the described cluster can reach at full scale; None when no node types are described."""
        if not self.worker_types:
            return None
        return self.head.gpus + sum(w.gpus * w.max_workers for w in self.worker_types.values())

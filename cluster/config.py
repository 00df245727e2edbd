"""The `cluster:` section: where the job runs, where results go, and the node types a cloud
cluster is rendered from (Ray cluster launcher YAML or KubeRay manifests)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainers.config import Section


class NodeType(Section):
    instance_type: str | None = Field(default=None, description="Cloud machine type (e.g. g5.2xlarge).")
    cpus: int = Field(default=8, ge=1, description="CPUs the node offers to Ray.")
    gpus: int = Field(default=0, ge=0, description="GPUs the node offers to Ray.")
    memory_gb: float | None = Field(default=None, gt=0, description="Memory the node offers (KubeRay limits).")
    min_workers: int = Field(default=0, ge=0, description="Autoscaler floor (worker types only).")
    max_workers: int = Field(default=0, ge=0, description="Autoscaler ceiling (worker types only).")

    @model_validator(mode="after")
    def _bounds(self) -> NodeType:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})")
        return self


class RuntimeEnvSection(Section):
    pip: list[str] = Field(default_factory=list, description="Extra pip packages installed on every node.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Non-secret environment variables for every worker."
    )

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if any(s in k.upper() for s in ("TOKEN", "SECRET", "PASSWORD", "KEY"))]
        if bad:
            raise ValueError(
                f"env_vars {bad} look like secrets; specs are saved with checkpoints. "
                "Set secrets in the cluster's environment instead"
            )
        return v


class ClusterSection(Section):
    address: str | None = Field(
        default=None,
        description="Ray cluster to join: 'auto', 'ray://host:10001' or host:port. Empty (and no "
        "RAY_ADDRESS): start an embedded local Ray on this machine.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs for an embedded local Ray; empty: all of this machine's."
    )
    include_dashboard: bool = Field(default=False, description="Start the Ray dashboard (embedded Ray only).")
    dashboard_host: str = Field(default="127.0.0.1", description="Dashboard bind address; loopback by default.")
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
    region: str | None = Field(default=None, description="Cloud region (aws/gcp).")
    image: str = Field(default="rayproject/ray:2.60.0-py311", description="Container image for every node.")
    setup_commands: list[str] = Field(
        default_factory=list, description="Shell commands run on each node before Ray starts."
    )
    head: NodeType = Field(default_factory=NodeType, description="The head node.")
    worker_types: dict[str, NodeType] = Field(
        default_factory=dict, description="Worker node types by name, each with autoscaling bounds."
    )

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

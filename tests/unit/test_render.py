"""Cluster descriptions rendered from the spec: launcher YAMLs pass Ray's own schema and validation,
KubeRay manifests carry what the operator needs, and the examples shipped under cluster/ are exactly
what render() produces now."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.errors import ConfigError, UserError
from cluster.loader import load_spec, validate_doc
from cluster.render import (
    PROVIDERS,
    RAY_VERSION,
    SERVE_IMPORT_PATH,
    autoscaling_cluster_args,
    example_renders,
    k8s_name,
    kuberay_manifests,
    launcher_config,
    relative_spec_path,
    render,
    zerotune_requirements,
)
from serving.config import ServeSection

ROOT = Path(__file__).resolve().parents[2]
GPU_EXAMPLES = ["bert-zero2-gpu", "llama-lora-zero3-gpu", "ner"]
RAY_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

BASE = {
    "name": "Demo_Run.1",
    "cluster": {
        "provider": "aws",
        "region": {"aws": "us-west-2", "gcp": "us-central1"},
        "availability_zone": {"gcp": "us-central1-b"},
        "project_id": "proj-1",
        "storage_path": "s3://bucket/zt",
        "image": f"rayproject/ray:{RAY_VERSION}-py311-gpu",
        "setup_commands": ["echo first"],
        "head": {"instance_type": {"aws": "m5.xlarge", "gcp": "n2-standard-4"}, "cpus": 4},
        "worker_types": {
            "gpu": {"instance_type": {"aws": "g5.xlarge", "gcp": "n1-standard-8"}, "accelerator_type": None,
                    "cpus": 8, "gpus": 1, "min_workers": 1, "max_workers": 3, "spot": True},
            "cpu": {"instance_type": {"aws": "m5.2xlarge", "gcp": "n2-standard-8"}, "cpus": 8, "max_workers": 2},
        },
        "idle_timeout_minutes": 2,
        "runtime_env": {"pip": ["emoji==2.0"], "env_vars": {"HF_HOME": "/tmp/hf"}},
    },
    "train": {
        "model": {"name_or_path": "bert-base-uncased", "task": "sequence-classification"},
        "data": {"train": "hf://stanfordnlp/sst2"},
        "scaling": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 2},
    },
    "serve": {"auth_token_env": "MY_TOKEN", "num_gpus_per_replica": 0.5},
}


def spec_of(**cluster_changes):
    doc = copy.deepcopy(BASE)
    doc["cluster"].update(cluster_changes)
    return validate_doc(doc)


def validated_by_ray(cfg: dict) -> dict:
    """Ray's schema on the file as written, then `ray up`'s own preparation and validation."""
    jsonschema.validate(cfg, RAY_SCHEMA)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


# --------------------------------------------------------------------------- launcher YAML


@pytest.mark.parametrize("provider", ["aws", "gcp"])
@pytest.mark.parametrize("example", GPU_EXAMPLES)
def test_example_launcher_configs_pass_rays_validation(example, provider):
    path = f"examples/{example}.yaml"
    spec = load_spec(ROOT / path)
    (text,) = render(spec, provider, spec_path=path).values()
    cfg = yaml.safe_load(text)
    prepared = validated_by_ray(cfg)
    assert prepared["provider"]["type"] == provider
    assert cfg["cluster_name"] == k8s_name(spec.name)
    assert cfg["docker"]["image"] == spec.cluster.image
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == spec.cluster.head.cpus and head["max_workers"] == 0
    for name, node in spec.cluster.worker_types.items():
        t = cfg["available_node_types"][name]
        assert t["resources"] == {"CPU": node.cpus, "GPU": node.gpus}
        assert (t["min_workers"], t["max_workers"]) == (node.min_workers, node.max_workers)
        key = "InstanceType" if provider == "aws" else "machineType"
        assert t["node_config"][key] == node.instance_type[provider]


def test_launcher_yaml_follows_the_cluster_section():
    spec = spec_of()
    aws = launcher_config(spec, "aws", spec_path="exp.yaml")
    validated_by_ray(aws)
    assert aws["cluster_name"] == "demo-run-1"
    assert aws["max_workers"] == 5 and aws["idle_timeout_minutes"] == 2
    assert aws["provider"] == {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False}
    assert aws["available_node_types"]["gpu"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "InstanceMarketOptions" not in aws["available_node_types"]["cpu"]["node_config"]
    assert aws["setup_commands"] == ["echo first", "pip install -e ~/zerotune"]
    assert aws["file_mounts"] == {"~/zerotune": "."} and ".gitignore" in aws["rsync_filter"]
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in aws["head_start_ray_commands"])


def test_gcp_gpu_nodes_get_accelerators_and_terminate_on_maintenance():
    doc = copy.deepcopy(BASE)
    doc["cluster"]["worker_types"]["gpu"]["accelerator_type"] = "nvidia-tesla-t4"
    gcp = launcher_config(validate_doc(doc), "gcp", spec_path="exp.yaml")
    prepared = validated_by_ray(gcp)
    assert prepared["provider"] == {"type": "gcp", "region": "us-central1", "availability_zone": "us-central1-b",
                                    "project_id": "proj-1"}
    gpu = gcp["available_node_types"]["gpu"]
    assert gpu["node_config"]["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    assert gpu["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert gpu["node_config"]["scheduling"]["provisioningModel"] == "SPOT"
    assert any("nvidia-smi" in c for c in gpu["initialization_commands"])
    assert gcp["available_node_types"]["cpu"]["initialization_commands"] == []


def test_dashboard_binds_to_loopback_unless_the_spec_opens_it():
    default = launcher_config(spec_of(), "aws", spec_path="exp.yaml")
    assert "--dashboard-host=127.0.0.1" in default["head_start_ray_commands"][-1]
    opened = launcher_config(spec_of(dashboard_host="0.0.0.0"), "aws", spec_path="exp.yaml")
    assert "--dashboard-host=0.0.0.0" in opened["head_start_ray_commands"][-1]


def test_missing_cloud_settings_are_listed_together():
    doc = copy.deepcopy(BASE)
    doc["cluster"].update(region=None, project_id=None, availability_zone={"aws": "us-west-2a"})
    del doc["cluster"]["worker_types"]["cpu"]["instance_type"]
    with pytest.raises(ConfigError) as err:
        launcher_config(validate_doc(doc), "gcp", spec_path="exp.yaml")
    text = str(err.value)
    assert "cluster.region: required to render for gcp" in text
    assert "cluster.project_id: required to render for gcp" in text
    assert "cluster.availability_zone: has no entry for gcp" in text
    assert "cluster.worker_types.cpu.instance_type: required to render for gcp" in text


def test_a_single_instance_type_belongs_to_the_specs_own_cloud():
    doc = copy.deepcopy(BASE)
    doc["cluster"]["head"]["instance_type"] = "m5.xlarge"
    spec = validate_doc(doc)
    launcher_config(spec, "aws", spec_path="exp.yaml")  # cluster.provider is aws
    with pytest.raises(ConfigError, match=r"cluster.head.instance_type: 'm5.xlarge' is for cluster.provider 'aws'"):
        launcher_config(spec, "gcp", spec_path="exp.yaml")


def test_a_train_worker_that_fits_no_node_type_is_refused():
    doc = copy.deepcopy(BASE)
    doc["train"]["scaling"]["cpus_per_worker"] = 16
    with pytest.raises(ConfigError, match="a Train worker needs 16 CPU and 1 GPU"):
        render(validate_doc(doc), "aws", spec_path="exp.yaml")


def test_an_image_with_another_ray_is_refused():
    with pytest.raises(ConfigError, match="runs Ray 2.9.0"):
        render(spec_of(image="rayproject/ray:2.9.0-py311-gpu"), "kuberay", spec_path="exp.yaml")


def test_provider_defaults_to_the_spec_and_local_is_not_a_target():
    assert list(render(spec_of(), spec_path="exp.yaml")) == ["demo-run-1.yaml"]
    with pytest.raises(ConfigError, match="rendering needs one of aws, gcp, kuberay"):
        render(spec_of(provider="local"), spec_path="exp.yaml")


def test_autoscaling_cluster_args_mirror_the_launcher_node_types():
    spec = spec_of()
    args = autoscaling_cluster_args(spec.cluster, object_store_memory=10**8)
    launcher = launcher_config(spec, "aws", spec_path="exp.yaml")
    assert args["head_resources"] == {"CPU": 4, "object_store_memory": 10**8}
    assert args["idle_timeout_minutes"] == 2 and args["max_workers"] == launcher["max_workers"]
    for name, t in args["worker_node_types"].items():
        ref = launcher["available_node_types"][name]
        assert {k: v for k, v in t["resources"].items() if k != "object_store_memory"} == ref["resources"]
        assert (t["min_workers"], t["max_workers"], t["node_config"]) == (ref["min_workers"], ref["max_workers"], {})


# --------------------------------------------------------------------------- KubeRay


def _check_cluster_spec(cs: dict, spec) -> None:
    assert cs["rayVersion"] == RAY_VERSION and cs["enableInTreeAutoscaling"] is True
    assert cs["autoscalerOptions"]["idleTimeoutSeconds"] == round(spec.cluster.idle_timeout_minutes * 60)
    head = cs["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    (container,) = head["template"]["spec"]["containers"]
    assert container["image"] == spec.cluster.image
    assert container["resources"]["limits"]["cpu"] == str(spec.cluster.head.cpus)
    assert {p["name"] for p in container["ports"]} >= {"gcs-server", "dashboard", "client", "serve"}
    groups = {g["groupName"]: g for g in cs["workerGroupSpecs"]}
    assert set(groups) == set(spec.cluster.worker_types)
    for name, node in spec.cluster.worker_types.items():
        g = groups[name]
        assert DNS_LABEL.match(g["groupName"])
        assert (g["minReplicas"], g["maxReplicas"]) == (node.min_workers, node.max_workers)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert isinstance(g["rayStartParams"], dict)
        (wc,) = g["template"]["spec"]["containers"]
        res = wc["resources"]
        assert res["requests"] == res["limits"]
        assert res["limits"]["cpu"] == str(node.cpus)
        if node.gpus:
            assert res["limits"]["nvidia.com/gpu"] == str(node.gpus)
        else:
            assert "nvidia.com/gpu" not in res["limits"]
        assert "pip install" in wc["command"][0]  # KubeRay runs it before its generated `ray start`


def _check_manifest(doc: dict, kind: str) -> None:
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert DNS_LABEL.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 47


@pytest.mark.parametrize("example", GPU_EXAMPLES)
def test_example_kuberay_manifests_have_the_required_fields(example):
    path = f"examples/{example}.yaml"
    spec = load_spec(ROOT / path)
    files = render(spec, "kuberay", spec_path=path, checkpoint="/mnt/ckpt/best")
    docs = {yaml.safe_load(t)["kind"]: yaml.safe_load(t) for t in files.values()}
    assert set(docs) == {"RayCluster", "RayJob", "RayService"}
    for kind, doc in docs.items():
        _check_manifest(doc, kind)
    _check_cluster_spec(docs["RayCluster"]["spec"], spec)
    _check_cluster_spec(docs["RayJob"]["spec"]["rayClusterSpec"], spec)
    _check_cluster_spec(docs["RayService"]["spec"]["rayClusterConfig"], spec)

    job = docs["RayJob"]["spec"]
    assert job["entrypoint"] == f"python -m cluster.cli run {path}"
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"].endswith(".zip")

    serve_config = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == SERVE_IMPORT_PATH == "serving.app:build_app"
    assert app["args"]["checkpoint"] == "/mnt/ckpt/best"
    assert ServeSection.model_validate(app["args"]["serve"]) == spec.serve
    assert serve_config["http_options"]["port"] == spec.serve.port


def test_import_path_matches_serving():
    from serving.app import IMPORT_PATH

    assert SERVE_IMPORT_PATH == IMPORT_PATH


def test_kuberay_runtime_env_secrets_and_overrides():
    spec = spec_of()
    docs = kuberay_manifests(spec, spec_path="exp.yaml", overrides=["train.optim.lr=1e-4"],
                             working_dir="https://example.com/zt.zip", command="tune")
    job = docs["RayJob"]["spec"]
    assert job["entrypoint"] == "python -m cluster.cli tune exp.yaml train.optim.lr=1e-4"
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {
        "working_dir": "https://example.com/zt.zip", "pip": ["emoji==2.0"], "env_vars": {"HF_HOME": "/tmp/hf"}}
    app = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])["applications"][0]
    assert app["runtime_env"]["working_dir"] == "https://example.com/zt.zip"
    assert app["args"]["checkpoint"].startswith("<checkpoint directory")  # a visible placeholder
    env = docs["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env}
    assert by_name["MY_TOKEN"] == {"name": "demo-run-1-secrets", "key": "serve-token"}
    assert by_name["HF_TOKEN"]["optional"] is True
    gpu_pod = docs["RayCluster"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_kuberay_needs_a_uri_for_the_code():
    with pytest.raises(ConfigError, match="KubeRay pods fetch the code from a URI"):
        kuberay_manifests(spec_of(storage_path="~/results"), spec_path="exp.yaml")
    kuberay_manifests(spec_of(storage_path="~/results"), spec_path="exp.yaml", working_dir="gs://b/zt.zip")
    with pytest.raises(ConfigError, match="working_dir: got './zt.zip'"):
        kuberay_manifests(spec_of(), spec_path="exp.yaml", working_dir="./zt.zip")


def test_pods_install_zerotunes_dependencies_but_not_ray():
    reqs = zerotune_requirements()
    assert any(r.startswith("transformers") for r in reqs) and any(r.startswith("deepspeed") for r in reqs)
    assert not any(r.startswith("ray") for r in reqs)


# --------------------------------------------------------------------------- names, paths, schema


def test_k8s_names():
    assert k8s_name("Demo_Run.1") == "demo-run-1"
    assert k8s_name("1st") == "zt-1st"
    assert len(k8s_name("a" * 80)) == 40


def test_spec_path_must_be_inside_the_shipped_directory(tmp_path):
    assert relative_spec_path("examples/x.yaml") == "examples/x.yaml"
    assert relative_spec_path(Path.cwd() / "examples" / "x.yaml") == "examples/x.yaml"
    with pytest.raises(UserError, match="inside the directory shipped"):
        relative_spec_path(tmp_path.parent / "elsewhere.yaml")
    with pytest.raises(UserError, match="no '..'"):
        relative_spec_path("../x.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"worker_types": {"GPU_big": {"gpus": 1, "max_workers": 1}}}, "worker type name 'GPU_big'"),
        ({"worker_types": {"gpu": {"gpus": 1}}}, "max_workers 0 and would never start"),
        ({"head": {"max_workers": 2}}, "the head is always one node"),
        ({"region": {"azure": "eastus"}}, "unknown cloud 'azure'"),
        ({"idle_timeout_minutes": -1}, "greater than or equal to 0"),
        ({"worker_types": {"gpu": {"accelerator_type": "nvidia-tesla-t4", "max_workers": 1}}}, "needs gpus >= 1"),
    ],
)
def test_cluster_section_rejects(change, message):
    doc = copy.deepcopy(BASE)
    doc["cluster"].update(change)
    doc["train"]["scaling"]["use_gpu"] = False
    doc["serve"]["num_gpus_per_replica"] = 0
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_doc(doc)


# --------------------------------------------------------------------------- shipped examples


def test_shipped_cluster_files_are_what_render_produces_now():
    expected = example_renders(ROOT)
    shipped = {p for provider in PROVIDERS for p in (ROOT / "cluster" / provider).glob("*.yaml")}
    assert expected, "no example describes worker node types"
    stale = sorted(str(p.relative_to(ROOT)) for p, text in expected.items()
                   if not p.is_file() or p.read_text(encoding="utf-8") != text)
    orphans = sorted(str(p.relative_to(ROOT)) for p in shipped - set(expected))
    assert not stale and not orphans, (
        f"cluster/ is out of date (stale or missing: {stale}; no longer rendered: {orphans}). "
        "Run `python -m cluster.render` and commit the result."
    )


def test_every_gpu_example_is_shipped_for_every_provider():
    rendered = {p.relative_to(ROOT).as_posix() for p in example_renders(ROOT)}
    for example in GPU_EXAMPLES:
        assert f"cluster/aws/{example}.yaml" in rendered and f"cluster/gcp/{example}.yaml" in rendered
        assert {f"cluster/kuberay/{example}-{k}.yaml" for k in ("raycluster", "rayjob", "rayservice")} <= rendered


def test_shipped_files_carry_no_secret_values():
    for provider in PROVIDERS:
        for p in (ROOT / "cluster" / provider).glob("*.yaml"):
            text = p.read_text(encoding="utf-8")
            assert not re.search(r"(?i)(hf_[a-z0-9]{20,}|aws_secret|password:)", text), p

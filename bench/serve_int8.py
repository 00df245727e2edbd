"""Dynamic int8 quantization for CPU serving (`serve.quantize: int8`): accuracy and speed against
the same checkpoint in fp32, in one run, through the Engine a replica runs.

Usage:
    .venv/bin/python bench/serve_int8.py                      # the newest tweets-full or quickstart winner
    .venv/bin/python bench/serve_int8.py --checkpoint PATH    # any sequence-classification checkpoint

Needs a trained checkpoint (int8's accuracy cost means nothing on an untrained head): by default the
one `zerotune run examples/tweets-full.yaml` (or `make demo`) left in ~/zerotune_results. Scores the
checkpoint's own held-out test split (the split `zerotune run` scores through HTTP), one torch thread
as a 1-CPU replica has. Writes bench/results/serve_int8.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from common import ROOT  # noqa: E402  (sets up the environment first)

RUNS = ("tweets-full", "quickstart")  # newest-first preference for the default checkpoint


def default_checkpoint() -> Path:
    for name in RUNS:
        summary = Path("~/zerotune_results", name, "summary.json").expanduser()
        if summary.is_file():
            return Path(json.loads(summary.read_text())["checkpoint"])
    raise SystemExit("no trained checkpoint found: run `make demo` (or zerotune run examples/tweets-full.yaml) "
                     "first, or pass --checkpoint PATH")


def measure(checkpoint: Path, quantize: str, texts: list[str], gold: list[int], n_labels: int,
            latency_rows: int) -> dict:
    import torch

    from serving.config import ServeSection
    from serving.engine import Engine
    from trainers.baseline import score

    engine = Engine.load(checkpoint, ServeSection(quantize=quantize))
    size_mb = sum(t.numel() * t.element_size() for t in engine.model.state_dict().values()
                  if isinstance(t, torch.Tensor)) / 2**20
    for text in texts[:16]:  # warm up
        engine.classify([text])
    start, predicted = time.perf_counter(), []
    for i in range(0, len(texts), 16):
        predicted += [max(range(n_labels), key=p.__getitem__) for p in engine.classify(texts[i:i + 16])]
    batch16 = len(texts) / (time.perf_counter() - start)
    lat = []
    for text in texts[:latency_rows]:
        t0 = time.perf_counter()
        engine.classify([text])
        lat.append((time.perf_counter() - t0) * 1000)
    metrics = score(gold, predicted, n_labels)
    return {"quantize": quantize, "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "batch16_tweets_per_s": round(batch16, 1), "batch1_p50_ms": round(statistics.median(lat), 2),
            "state_dict_mb": round(size_mb, 1), "predicted": predicted}


def markdown(out: dict) -> str:
    rows = "\n".join(f"| {r['quantize']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['batch16_tweets_per_s']} | "
                     f"{r['batch1_p50_ms']} | {r['state_dict_mb']} |" for r in out["runs"])
    ratios = "\n".join(f"| {k} | {v} |" for k, v in out["ratios"].items())
    return (f"# Dynamic int8 serving vs fp32 (MiniLM tweet classifier, CPU, 1 thread)\n\n"
            f"Checkpoint `{out['checkpoint']}`; {out['rows']} held-out test tweets; {out['machine']}.\n\n"
            "| quantize | accuracy | macro-F1 | tweets/s (batch 16) | p50 ms (batch 1) | weights MB |\n"
            f"|---|---:|---:|---:|---:|---:|\n{rows}\n\n| ratio (int8 vs fp32) | value |\n|---|---:|\n{ratios}\n")


def main() -> None:
    import torch

    from trainers.baseline import held_out
    from trainers.checkpoint import read_train

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--latency-rows", type=int, default=200, help="single-tweet calls timed for p50")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    held = held_out(read_train(checkpoint))  # the split `zerotune run` scores through HTTP
    texts, gold, labels = held.texts, held.gold, held.labels
    torch.set_num_threads(1)  # what a 1-CPU replica gets (serving/deployment.py)
    fp32, int8 = (measure(checkpoint, q, texts, gold, len(labels), args.latency_rows) for q in ("none", "int8"))
    agree = sum(a == b for a, b in zip(fp32.pop("predicted"), int8.pop("predicted"), strict=True)) / len(texts)
    out = {
        "checkpoint": str(checkpoint), "rows": len(texts),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "runs": [fp32, int8],
        "ratios": {
            "throughput_batch16": round(int8["batch16_tweets_per_s"] / fp32["batch16_tweets_per_s"], 3),
            "p50_latency_batch1": round(int8["batch1_p50_ms"] / fp32["batch1_p50_ms"], 3),
            "weights_size": round(int8["state_dict_mb"] / fp32["state_dict_mb"], 3),
            "macro_f1_change_points": round(100 * (int8["macro_f1"] - fp32["macro_f1"]), 2),
            "same_prediction_share": round(agree, 4),
        },
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "serve_int8.json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out, "serve_int8.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()

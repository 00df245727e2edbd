"""CPU serving paths against each other in one run, through the Engine a replica runs: torch fp32,
torch dynamic int8 (`serve.quantize: int8`), ONNX Runtime fp32 and ONNX Runtime int8
(`serve.backend: onnx`, from a `zerotune export --int8` of the same checkpoint, checked on its probe).

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
import tempfile
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


PATHS = (("torch fp32", "torch", "none"), ("torch int8", "torch", "int8"),
         ("onnx fp32", "onnx", "none"), ("onnx int8", "onnx", "int8"))


def weights_mb(engine) -> float:
    import torch

    if hasattr(engine.model, "session"):  # ONNX: the model file
        return engine.model.path.stat().st_size / 2**20
    return sum(t.numel() * t.element_size() for t in engine.model.state_dict().values()
               if isinstance(t, torch.Tensor)) / 2**20


def measure(checkpoint: Path, name: str, backend: str, quantize: str, texts: list[str], gold: list[int],
            n_labels: int, latency_rows: int) -> dict:
    from serving.config import ServeSection
    from serving.engine import Engine
    from trainers.baseline import score

    engine = Engine.load(checkpoint, ServeSection(backend=backend, quantize=quantize))
    size_mb = weights_mb(engine)
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
    return {"path": name, "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "batch16_tweets_per_s": round(batch16, 1), "batch1_tweets_per_s": round(1000 * len(lat) / sum(lat), 1),
            "batch1_p50_ms": round(statistics.median(lat), 2), "weights_mb": round(size_mb, 1),
            "predicted": predicted}


def markdown(out: dict) -> str:
    rows = "\n".join(
        f"| {r['path']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['macro_f1_change_points']:+.2f} | "
        f"{r['same_prediction_share']:.4f} | {r['batch16_tweets_per_s']} | {r['throughput_batch16_vs_torch_fp32']}x | "
        f"{r['batch1_tweets_per_s']} | {r['batch1_p50_ms']} | {r['weights_mb']} |" for r in out["runs"])
    checks = "\n".join(f"| {c['artifact']} | {c['max_abs_diff']:.3g} | {c['tolerance']:g} | {c['same_argmax']:.2f} |"
                        for c in out["export_checks"])
    t = out["target"]
    return (f"# CPU serving paths: torch and ONNX Runtime, fp32 and int8 (MiniLM tweet classifier, 1 thread)\n\n"
            f"Checkpoint `{out['checkpoint']}`; {out['rows']} held-out test tweets; {out['machine']}.\n\n"
            "| path | accuracy | macro-F1 | vs fp32 (points) | same predictions | tweets/s (batch 16) | vs torch fp32 | "
            "tweets/s (batch 1) | p50 ms (batch 1) | weights MB |\n"
            f"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n\n"
            f"Target: ONNX int8 >= 2.5x torch fp32 at batch 16 with <= 0.7 points macro-F1 lost: "
            f"{t['onnx_int8_throughput_x']}x, {t['onnx_int8_macro_f1_change_points']:+.2f} points "
            f"({'met' if t['met'] else 'missed'}).\n\n"
            "`zerotune export --int8` checks on probe.json (largest logit difference):\n\n"
            f"| artifact | max abs diff | tolerance | same top output |\n|---|---:|---:|---:|\n{checks}\n")


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
    import onnxruntime

    from trainers.export import export

    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp, "export")
        done = export(checkpoint, exported, int8=True)  # checked on the probe before it is used
        runs = [measure(exported if backend == "onnx" else checkpoint, name, backend, quantize, texts, gold,
                        len(labels), args.latency_rows) for name, backend, quantize in PATHS]
    ref = runs[0]
    for r in runs:
        r["same_prediction_share"] = round(sum(a == b for a, b in zip(ref["predicted"], r["predicted"], strict=True))
                                           / len(texts), 4)
        r["macro_f1_change_points"] = round(100 * (r["macro_f1"] - ref["macro_f1"]), 2)
        r["throughput_batch16_vs_torch_fp32"] = round(r["batch16_tweets_per_s"] / ref["batch16_tweets_per_s"], 2)
        r["p50_batch1_vs_torch_fp32"] = round(r["batch1_p50_ms"] / ref["batch1_p50_ms"], 2)
    for r in runs:
        r.pop("predicted")
    onnx8 = runs[3]
    out = {
        "checkpoint": str(checkpoint), "rows": len(texts),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"onnxruntime {onnxruntime.__version__}",
        "runs": runs,
        "export_checks": [c.model_dump() for c in done.checks],
        "target": {"onnx_int8_throughput_x": onnx8["throughput_batch16_vs_torch_fp32"],
                   "onnx_int8_macro_f1_change_points": onnx8["macro_f1_change_points"],
                   "met": onnx8["throughput_batch16_vs_torch_fp32"] >= 2.5 and onnx8["macro_f1_change_points"] >= -0.7},
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "serve_int8.json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out, "serve_int8.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()

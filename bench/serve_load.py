"""Serving load benchmark: the MiniLM tweet classifier behind Ray Serve, against the same model
called directly in this process, in one run.

Usage:
    .venv/bin/python bench/serve_load.py                 # writes bench/results/serve_load.{json,md}
    .venv/bin/python bench/serve_load.py --requests 200  # shorter run

What it measures: a closed loop (each of `c` clients sends its next request when the previous one
answers) on 127.0.0.1 at concurrency 1, 8 and 32, with Serve batching on (max_batch_size 16) and
off (max_batch_size 1); one tweet per request. The baseline is `Engine.classify([tweet])` called
directly on the same tweets with the same torch thread count as the replica.
Targets: batched/unbatched throughput at c=32 >= 2x; p50 overhead at c=1 over the direct call <= 5 ms.
The checkpoint is MiniLM with a fresh 3-label head: latency does not depend on training.

The causal-LM row: a GPT-2-shaped model (6 layers, 384 wide, MiniLM's 30k WordPiece vocabulary,
random weights built in code: speed does not depend on what it says), streamed through
`/v1/completions` with `stream: true` at concurrency 1 and 8, each request 64 greedy tokens;
time to first token (first text chunk) and tokens/s, against a plain in-process `generate` loop
with transformers' TextIteratorStreamer (one prompt at a time for c=1, the 8 prompts as one
batch for c=8), same torch thread count.

    .venv/bin/python bench/serve_load.py --only lm   # just the causal-LM row (keeps the rest)
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

from common import LABELS, MODEL, ROOT, TWEETS  # noqa: E402  (sets up the environment first)

CONCURRENCY = (1, 8, 32)
REPLICA_CPUS = 1.0


LM_TOKENS = 64
LM_CONCURRENCY = (1, 8)
LM_PROMPTS = ["the movie was", "today i saw a", "my favourite food is", "the weather in paris",
              "she said that the", "after the game we", "this phone is really", "tomorrow morning i will"]


def build_checkpoint(path: Path) -> Path:
    from trainers.checkpoint import write_servable
    from trainers.config import TrainSection
    from trainers.model import load_base_model, load_tokenizer, resolve_model_path
    from trainers.tasks import get_task

    base = resolve_model_path(MODEL)
    model = load_base_model(base, get_task("sequence-classification"), LABELS)
    tokenizer = load_tokenizer(base)
    train = TrainSection.model_validate({
        "model": {"name_or_path": MODEL, "task": "sequence-classification", "labels": LABELS},
        "data": {"train": TWEETS, "label_column": "sentiment"},
    })
    write_servable(path, model=model, tokenizer=tokenizer, train=train, labels=LABELS, step=0, epoch=0.0,
                   metrics={}, params=(0, sum(p.numel() for p in model.parameters())), probe=None)
    return path


def load_tweets(n: int) -> list[str]:
    from trainers.model import resolve_package_path

    with resolve_package_path(TWEETS).open(encoding="utf-8", errors="replace", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f) if row.get("text")]
    return texts[:n]


def summarize(latencies_s: list[float], wall_s: float, batch_sizes: list[int] | None = None) -> dict:
    ms = sorted(x * 1000 for x in latencies_s)
    out = {
        "requests": len(ms),
        "rps": round(len(ms) / wall_s, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }
    if batch_sizes:
        out["mean_batch_size"] = round(statistics.fmean(batch_sizes), 2)
    return out


def direct(checkpoint: Path, texts: list[str]) -> dict:
    """The same Engine the replica runs, called in this process one tweet at a time."""
    import torch

    from serving.config import ServeSection
    from serving.engine import Engine

    torch.set_num_threads(int(REPLICA_CPUS))  # what the replica gets (serving/deployment.py)
    engine = Engine.load(checkpoint, ServeSection())
    for text in texts[:20]:
        engine.classify([text])
    lat = []
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        engine.classify([text])
        lat.append(time.perf_counter() - t0)
    single = summarize(lat, time.perf_counter() - start)
    batches = [texts[i:i + 16] for i in range(0, len(texts), 16)]
    start = time.perf_counter()
    for batch in batches:
        engine.classify(batch)
    single["batch16_rps"] = round(len(texts) / (time.perf_counter() - start), 1)
    torch.set_num_threads(os.cpu_count() or 1)
    return single


async def closed_loop(url: str, texts: list[str], concurrency: int, total: int) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[int, int] = {}
    per_client = max(1, total // concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for i in range(per_client):
            text = texts[(k * per_client + i) % len(texts)]
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v1/classify", json={"inputs": [text]})
            latencies.append(time.perf_counter() - t0)
            if r.status_code == 200:
                batch_sizes.append(r.json()["batch_size"])
            else:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        await asyncio.gather(*(client(k, http) for k in range(min(concurrency, 8))))  # warm up connections
        latencies.clear(), batch_sizes.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
        wall = time.perf_counter() - start
    out = summarize(latencies, wall, batch_sizes)
    out["errors"] = errors
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_levels(checkpoint: Path, texts: list[str], *, name: str, port: int, max_batch_size: int,
                 wait_s: float, total: int) -> dict:
    from ray import serve

    from serving.app import start
    from serving.config import ServeSection

    spec = ServeSection(
        port=port, app_name=name, route_prefix=f"/{name}", max_batch_size=max_batch_size,
        batch_wait_timeout_s=wait_s, num_cpus_per_replica=REPLICA_CPUS, max_queued_requests=-1,
        max_ongoing_requests=64,
    )
    url = start(checkpoint, spec)
    try:
        return {f"c{c}": asyncio.run(closed_loop(url, texts, c, max(total, 10 * c))) for c in CONCURRENCY}
    finally:
        serve.delete(name)


def to_markdown(result: dict) -> str:
    r, t = result["ratios"], result["targets"]
    lines = [
        "# Serving load: MiniLM tweet classifier on Ray Serve",
        "",
        f"{result['machine']}. One replica with {REPLICA_CPUS:g} CPU (torch threads {int(REPLICA_CPUS)}); the "
        "load generator, the Serve proxy and the replica share the machine. One tweet per request, closed loop "
        f"on 127.0.0.1, {result['requests_per_level']} requests per level (at least 10 per client). "
        f"batch_wait_timeout_s {result['batch_wait_timeout_s']}.",
        "",
        "| setup | c | req/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    d = result["direct"]
    lines.append(f"| direct call (in-process) | 1 | {d['rps']} | {d['p50_ms']} | {d['p99_ms']} | 1 | {{}} |")
    for setup in ("batched", "unbatched"):
        for level, s in result[setup].items():
            lines.append(f"| serve, {setup} | {level[1:]} | {s['rps']} | {s['p50_ms']} | {s['p99_ms']} | "
                         f"{s.get('mean_batch_size', '-')} | {s['errors'] or {}} |")
    lines += [
        "",
        f"Direct call, 16 tweets per forward pass: {d['batch16_rps']} tweets/s (the ceiling batching can approach).",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---:|---|",
        f"| batched / unbatched throughput at c=32 | {r['batched_over_unbatched_c32']}x | >= {t['throughput_ratio_c32']}x "
        f"| {'yes' if r['batched_over_unbatched_c32'] >= t['throughput_ratio_c32'] else 'no'} |",
        f"| p50 overhead at c=1, unbatched (serve - direct) | {r['p50_overhead_c1_unbatched_ms']} ms | <= "
        f"{t['p50_overhead_c1_ms']} ms | {'yes' if r['p50_overhead_c1_unbatched_ms'] <= t['p50_overhead_c1_ms'] else 'no'} |",
        f"| p50 overhead at c=1, batched (serve - direct) | {r['p50_overhead_c1_batched_ms']} ms | <= "
        f"{t['p50_overhead_c1_ms']} ms | {'yes' if r['p50_overhead_c1_batched_ms'] <= t['p50_overhead_c1_ms'] else 'no'} |",
        "",
        f"Conditions: load average (1/5/15 min) {result['loadavg_start']} before the run and "
        f"{result['loadavg_end']} after it, on {os.cpu_count()} CPUs; the run itself keeps about 3 processes "
        "busy (client, proxy, replica), so more than that is other work sharing the cores. In-process, "
        f"16 tweets per forward pass ran at {d['batch16_rps']} tweets/s against {d['rps']} one at a time "
        f"({round(d['batch16_rps'] / d['rps'], 2)}x): that is all the compute batching can save here, before "
        "any serving cost.",
        "",
    ]
    return "\n".join(lines)


# --- causal LM, streamed ------------------------------------------------------------------------


def build_lm_checkpoint(path: Path) -> Path:
    """A GPT-2-shaped causal LM with MiniLM's tokenizer, random weights, written as a checkpoint."""
    import torch
    import transformers as tf

    from trainers.checkpoint import write_servable
    from trainers.config import TrainSection
    from trainers.model import load_tokenizer, resolve_model_path

    torch.manual_seed(0)
    tokenizer = load_tokenizer(resolve_model_path(MODEL))
    config = tf.GPT2Config(vocab_size=len(tokenizer), n_embd=384, n_layer=6, n_head=6, n_positions=512,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                           eos_token_id=tokenizer.sep_token_id)
    model = tf.GPT2LMHeadModel(config)
    base = path.parent / "lm-base"
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    train = TrainSection.model_validate({"model": {"name_or_path": str(base), "task": "causal-lm"},
                                         "data": {"train": "unused.jsonl"}})
    write_servable(path, model=model, tokenizer=tokenizer, train=train, labels=None, step=0, epoch=0.0,
                   metrics={}, params=(0, sum(p.numel() for p in model.parameters())), probe=None)
    return path


def _lm_summary(ttft_s: list[float], tokens: int, wall_s: float, per_stream_tps: list[float]) -> dict:
    ms = sorted(x * 1000 for x in ttft_s)
    return {"requests": len(ms), "ttft_p50_ms": round(statistics.median(ms), 1), "ttft_max_ms": round(ms[-1], 1),
            "tokens_per_s": round(tokens / wall_s, 1),
            "per_stream_tokens_per_s": round(statistics.median(per_stream_tps), 1)}


def lm_direct(checkpoint: Path, rounds: int) -> dict:
    """A plain generate loop in this process, streamed with TextIteratorStreamer."""
    import threading

    import torch
    from transformers import TextIteratorStreamer

    from trainers.checkpoint import load_for_inference

    torch.set_num_threads(int(REPLICA_CPUS))
    loaded = load_for_inference(checkpoint)
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    kwargs = {"max_new_tokens": LM_TOKENS, "min_new_tokens": LM_TOKENS, "do_sample": False,
              "pad_token_id": tok.pad_token_id}

    def one(prompts: list[str]) -> tuple[float, float]:
        batch = tok(prompts, return_tensors="pt", padding=True)
        if len(prompts) == 1:
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            t0 = time.perf_counter()
            worker = threading.Thread(target=model.generate, kwargs={**batch, **kwargs, "streamer": streamer})
            worker.start()
            first = next(text for text in streamer if text) and time.perf_counter()
            for _ in streamer:
                pass
            worker.join()
            return first - t0, time.perf_counter() - t0
        # TextIteratorStreamer takes one row; a batch times its first token with a one-step generate
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**batch, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**batch, **kwargs)
        return first, time.perf_counter() - t0

    one(LM_PROMPTS[:1])  # warm up
    out = {}
    for c in LM_CONCURRENCY:
        ttft, tps, tokens, wall = [], [], 0, 0.0
        for r in range(rounds if c == 1 else max(1, rounds // 4)):
            prompts = [LM_PROMPTS[(r + k) % len(LM_PROMPTS)] for k in range(c)]
            first, total = one(prompts)
            ttft += [first] * c
            tps += [LM_TOKENS / total] * c
            tokens += LM_TOKENS * c
            wall += total
        out[f"c{c}"] = _lm_summary(ttft, tokens, wall, tps)
    torch.set_num_threads(os.cpu_count() or 1)
    return out


async def lm_streams(url: str, concurrency: int, per_client: int) -> dict:
    import httpx

    ttft, tps, tokens, errors = [], [], 0, {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in range(per_client):
            body = {"prompt": LM_PROMPTS[(k + i) % len(LM_PROMPTS)], "max_tokens": LM_TOKENS, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            first = None
            async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                if r.status_code != 200:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                        first = time.perf_counter()
                    if chunk.get("usage"):
                        made = chunk["usage"]["completion_tokens"]
            done = time.perf_counter()
            ttft.append((first or done) - t0)
            tps.append(made / (done - t0))
            tokens += made

    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        await client(0, http)  # warm up
        ttft.clear(), tps.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
        wall = time.perf_counter() - start
    out = _lm_summary(ttft, tokens, wall, tps)
    out["errors"] = errors
    out["mean_completion_tokens"] = round(tokens / max(1, len(ttft)), 1)
    return out


def lm_serve(checkpoint: Path, *, port: int, rounds: int, wait_s: float) -> dict:
    from ray import serve

    from serving.app import start
    from serving.config import ServeSection

    spec = ServeSection(port=port, app_name="lm", route_prefix="/lm", max_batch_size=8, num_cpus_per_replica=REPLICA_CPUS,
                        max_new_tokens=LM_TOKENS, max_queued_requests=-1, batch_wait_timeout_s=wait_s)
    url = start(checkpoint, spec)
    try:
        return {f"c{c}": asyncio.run(lm_streams(url, c, rounds if c == 1 else max(2, rounds // 4)))
                for c in LM_CONCURRENCY}
    finally:
        serve.delete("lm")


def lm_markdown(lm: dict) -> str:
    lines = [
        "## Causal LM, streamed (`/v1/completions`, `stream: true`)",
        "",
        f"GPT-2-shaped, 6 layers x 384, {lm['params_m']}M parameters, random weights; {LM_TOKENS} greedy tokens per "
        f"request; one replica, {REPLICA_CPUS:g} CPU, max_batch_size 8, batch_wait_timeout_s "
        f"{lm['batch_wait_timeout_s']}. Baseline: `model.generate` in this process "
        "with TextIteratorStreamer (c=1: one prompt at a time; c=8: the 8 prompts as one batch). TTFT is the "
        "first text chunk (TextStreamer releases a word once the next one starts).",
        "",
        "| setup | c | TTFT p50 ms | TTFT max ms | tokens/s (all streams) | tokens/s per stream |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setup in ("direct", "serve"):
        for level, s in lm[setup].items():
            lines.append(f"| {'in-process generate' if setup == 'direct' else 'serve, streamed'} | {level[1:]} | "
                         f"{s['ttft_p50_ms']} | {s['ttft_max_ms']} | {s['tokens_per_s']} | "
                         f"{s['per_stream_tokens_per_s']} |")
    lines += ["", "| ratio (serve / in-process) | c=1 | c=8 |", "|---|---:|---:|"]
    for key, label in (("tokens_per_s", "tokens/s"), ("ttft_p50_ms", "TTFT p50")):
        lines.append(f"| {label} | {lm['ratios'][f'{key}_c1']}x | {lm['ratios'][f'{key}_c8']}x |")
    lines += [
        "",
        "A generation batch runs until its last row ends (static batching with `generate`, no continuous "
        "batching): a request that arrives while one runs waits for it, so at c=8 the first text of a request "
        "that missed the running batch comes after that batch's 64 tokens. That wait, not the serving path, is "
        "most of the c=8 TTFT; at c=1 the stream costs the proxy hop and the batch wait.",
        f"Load average during the run: {lm.get('loadavg')}.",
    ]
    return "\n".join(lines + [""])


def run_lm(tmp: Path, port: int, rounds: int, wait_s: float) -> dict:
    checkpoint = build_lm_checkpoint(tmp / "lm-checkpoint")
    from trainers.checkpoint import read_manifest

    direct_lm = lm_direct(checkpoint, rounds)
    served = lm_serve(checkpoint, port=port, rounds=rounds, wait_s=wait_s)
    ratios = {}
    for c in LM_CONCURRENCY:
        ratios[f"tokens_per_s_c{c}"] = round(served[f"c{c}"]["tokens_per_s"] / direct_lm[f"c{c}"]["tokens_per_s"], 2)
        ratios[f"ttft_p50_ms_c{c}"] = round(served[f"c{c}"]["ttft_p50_ms"] / direct_lm[f"c{c}"]["ttft_p50_ms"], 2)
    return {"params_m": round(read_manifest(checkpoint).total_params / 1e6, 1), "tokens": LM_TOKENS,
            "batch_wait_timeout_s": wait_s,
            "direct": direct_lm, "serve": served, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=480, help="requests per concurrency level")
    parser.add_argument("--batch-wait", type=float, default=0.0, help="batch_wait_timeout_s when batching")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", choices=["all", "cls", "lm"], default="all",
                        help="run one part; the other part's figures are kept from the last results file")
    parser.add_argument("--lm-rounds", type=int, default=8, help="streamed requests per client at c=1 (c=8: a quarter)")
    parser.add_argument("--lm-batch-wait", type=float, default=0.02,
                        help="batch_wait_timeout_s of the LM app: a generation batch runs until its last row ends, "
                        "so requests that arrive together should start together")
    args = parser.parse_args()

    from ray import serve

    from cluster.config import ClusterSection
    from cluster.connect import connect

    previous_path = args.out / "serve_load.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    texts = load_tweets(2000)
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="zerotune-bench-") as tmp:
        port = free_port()
        result = dict(previous)
        if args.only in ("all", "cls"):
            checkpoint = build_checkpoint(Path(tmp) / "checkpoint")
            baseline = direct(checkpoint, texts[: args.requests])
            connect(ClusterSection())
            try:
                batched = serve_levels(checkpoint, texts, name="batched", port=port, max_batch_size=16,
                                       wait_s=args.batch_wait, total=args.requests)
                unbatched = serve_levels(checkpoint, texts, name="unbatched", port=port, max_batch_size=1,
                                         wait_s=0.0, total=args.requests)
            finally:
                serve.shutdown()
            result.update({
                "benchmark": "serve_load",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
                "loadavg_start": load_start,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "model": MODEL,
                "requests_per_level": args.requests,
                "batch_wait_timeout_s": args.batch_wait,
                "direct": baseline,
                "batched": batched,
                "unbatched": unbatched,
                "ratios": {
                    "batched_over_unbatched_c32": round(batched["c32"]["rps"] / unbatched["c32"]["rps"], 2),
                    "p50_overhead_c1_unbatched_ms": round(unbatched["c1"]["p50_ms"] - baseline["p50_ms"], 2),
                    "p50_overhead_c1_batched_ms": round(batched["c1"]["p50_ms"] - baseline["p50_ms"], 2),
                },
                "targets": {"throughput_ratio_c32": 2.0, "p50_overhead_c1_ms": 5.0},
            })
        if args.only in ("all", "lm"):
            connect(ClusterSection())
            try:
                result["causal_lm"] = run_lm(Path(tmp), port, args.lm_rounds, args.lm_batch_wait)
                result["causal_lm"]["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            finally:
                serve.shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = (to_markdown(result) if "ratios" in result else "") + (
        "\n" + lm_markdown(result["causal_lm"]) if "causal_lm" in result else "")
    (args.out / "serve_load.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()

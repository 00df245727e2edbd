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


def build_checkpoint(path: Path) -> Path:
    from trainers.checkpoint import write_servable
    from trainers.config import TrainSection
    from trainers.model import load_base_model, load_tokenizer, resolve_model_path

    base = resolve_model_path(MODEL)
    model = load_base_model(base, "sequence-classification", LABELS)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=480, help="requests per concurrency level")
    parser.add_argument("--batch-wait", type=float, default=0.0, help="batch_wait_timeout_s when batching")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from ray import serve

    from cluster.config import ClusterSection
    from cluster.connect import connect

    texts = load_tweets(2000)
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="zerotune-bench-") as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "checkpoint")
        baseline = direct(checkpoint, texts[: args.requests])
        connect(ClusterSection())
        port = free_port()
        try:
            batched = serve_levels(checkpoint, texts, name="batched", port=port, max_batch_size=16,
                                   wait_s=args.batch_wait, total=args.requests)
            unbatched = serve_levels(checkpoint, texts, name="unbatched", port=port, max_batch_size=1,
                                     wait_s=0.0, total=args.requests)
        finally:
            serve.shutdown()
    result = {
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
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serve_load.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()

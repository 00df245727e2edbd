"""Hostile-input and fault figures for the served endpoint: schemathesis with many examples against
each app's own OpenAPI document, and one of two replicas killed under load.

Usage (starts a local Ray; one Ray per machine):
    .venv/bin/python bench/fuzz_serving.py                  # 300 examples per operation and mode
    .venv/bin/python bench/fuzz_serving.py --examples 100   # shorter run
writes bench/results/fuzz_serving.{json,md}.

The apps, the checks and the load are those of tests/integration/test_serving_hostile.py (which runs
25 examples per operation and mode in `make test`); here the counts are reported instead of asserted:
- fuzzing: examples sent, statuses seen, 5xx answers, 4xx answers without zerotune's JSON error body,
  2xx answers that break their response schema (all three should be 0);
- two-replica kill: requests answered 200 without retries, the failures (the victim's in-flight
  requests), the longest stall after the kill (the longest wait for any answer), the slowest request.
The baseline is the issue's own measurement with one replica: the first answer came 13 s after a kill.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (sets up the environment and sys.path first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="schemathesis examples per operation and mode")
    parser.add_argument("--requests", type=int, default=2000, help="requests in the replica-kill load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the replica-kill load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from cluster.config import ClusterSection
    from cluster.connect import connect
    from tests.integration.test_serving_hostile import AUTH, fuzz, hostile_apps, kill_one_of_two

    result: dict = {"benchmark": "fuzz_serving", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                    f"{platform.python_version()}", "examples_per_operation_and_mode": args.examples}
    connect(ClusterSection(num_cpus=2))
    with tempfile.TemporaryDirectory(prefix="zerotune-fuzz-") as tmp, hostile_apps(Path(tmp)) as urls:
        result["fuzz"] = {}
        for name, headers in (("fcls", AUTH), ("flm", {})):
            started = time.monotonic()
            statuses, problems = fuzz(urls[name], headers, args.examples)
            codes = collections.Counter(code for (_, code) in statuses.elements())
            result["fuzz"][name] = {
                "examples": sum(statuses.values()), "operations": len({op for (op, _) in statuses}),
                "statuses": {str(k): v for k, v in sorted(codes.items())},
                "5xx": sum(v for k, v in codes.items() if k >= 500), "problems": len(problems),
                "first_problems": problems[:5], "seconds": round(time.monotonic() - started, 1),
            }
            print(name, json.dumps(result["fuzz"][name]), flush=True)
        kill = kill_one_of_two(urls["two"], clients=args.clients, total=args.requests, limit_s=300.0)
        kill.pop("survivor")
        result["replica_kill"] = {**kill, "replicas": 2, "retries": 0}
        print("kill", json.dumps(result["replica_kill"]), flush=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / "fuzz_serving.md").write_text(markdown)
    print(markdown)


def to_markdown(r: dict) -> str:
    lines = [f"# fuzz_serving ({r['machine']})", "",
             f"schemathesis, {r['examples_per_operation_and_mode']} examples per operation and mode (valid and "
             "invalid), against each app's /openapi.json on 127.0.0.1:", "",
             "| app | operations | examples | statuses seen | 5xx | rule breaks | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, f in r["fuzz"].items():
        seen = ", ".join(f"{k}: {v}" for k, v in f["statuses"].items())
        lines.append(f"| {name} | {f['operations']} | {f['examples']} | {seen} | {f['5xx']} | {f['problems']} | "
                     f"{f['seconds']} |")
    k = r["replica_kill"]
    lines += ["", f"One of 2 replicas killed (SIGKILL) a quarter into {k['requests']} requests from {k['clients']} "
              "clients, no retries:", "",
              "| answered 200 | failed | failed statuses | answered after the kill | longest stall after the kill | "
              "slowest request | load |", "|---|---|---|---|---|---|---|",
              f"| {k['ok']}/{k['requests']} ({k['ok'] / k['requests']:.2%}) | {k['failed']} | {k['failed_statuses']} | "
              f"{k['ok_after_kill']} | {k['longest_stall_s']} s | {k['slowest_request_s']} s | {k['load_s']} s |",
              "", "Before (one replica, the issue's measurement): first answer 13 s after the kill.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

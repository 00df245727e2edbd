"""`zerotune` command line: validate, show, schema, train, tune, serve, run.

A user error (UserError) prints one message and exits 2; anything else is a bug and keeps its
traceback (exit 1). Ray is only started by the commands that need a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import yaml

from .errors import UserError
from .loader import load_spec
from .spec import ExperimentSpec


def _cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.file, args.overrides)
    tune = f", tune: {len(spec.tune.search_space)} searched field(s)" if spec.tune else ""
    print(f"{args.file}: OK ({spec.name}: {spec.train.model.task}, {spec.train.scaling.num_workers} worker(s), "
          f"ZeRO-{spec.train.deepspeed.zero_stage}{', LoRA' if spec.train.lora.enabled else ''}{tune})")
    return 0


def derived_values(spec: ExperimentSpec) -> dict:
    t = spec.train
    out = {
        "global_batch_size": t.global_batch_size,
        "metric": t.resolved_metric,
        "mode": t.resolved_mode,
        "cpus_per_run": t.scaling.cpus_per_trial,
        "gpus_per_run": t.scaling.gpus_per_trial,
    }
    if t.lora.enabled:
        out["lora_alpha"] = t.lora.resolved_alpha
    if spec.tune:
        out["tune_metric"], out["tune_mode"] = spec.tune_metric, spec.tune_mode
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    spec = load_spec(args.file, args.overrides)
    doc = spec.model_dump(mode="json")
    doc["derived"] = derived_values(spec)
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(ExperimentSpec.model_json_schema(), indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainers.launch import fit

    from .connect import connect

    spec = load_spec(args.file, args.overrides)
    conn = connect(spec.cluster)
    print(f"[zerotune] Ray: {'embedded local' if conn.embedded else 'cluster at ' + conn.address} "
          f"({conn.num_cpus:g} CPUs, {conn.num_gpus:g} GPUs)", flush=True)
    result = fit(spec.train, storage_path=spec.cluster.storage_path, name=spec.name)
    metric = spec.train.resolved_metric
    print(f"\n[zerotune] {spec.name}: finished at step {result.metrics.get('step')}")
    print(f"  run directory:    {result.run_dir}")
    print(f"  best checkpoint:  {result.best_checkpoint} ({metric} {result.best_metrics.get(metric, float('nan')):.4f})")
    print(f"  latest:           {result.latest_checkpoint}")
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("eval_")}
    print(f"  final metrics:    {shown}")
    return 0


def _not_landed(what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        load_spec(args.file, args.overrides)  # still catch spec mistakes first
        raise UserError(f"`zerotune {what}` is not available in this version yet; nothing was run.")

    return run


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="experiment YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.optim.lr=1e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerotune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec; exits 2 with every problem listed")
    _add_spec_args(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("show", help="print the resolved spec with defaults and derived values")
    _add_spec_args(p)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("schema", help="print the JSON Schema of a spec (for editors)")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("train", help="fine-tune on the Ray cluster (rerun the same name to resume)")
    _add_spec_args(p)
    p.set_defaults(func=_cmd_train)

    for name, help_ in [
        ("tune", "search hyperparameters with Ray Tune"),
        ("serve", "serve a checkpoint with Ray Serve"),
        ("run", "tune, pick the winner, serve it"),
    ]:
        p = sub.add_parser(name, help=help_)
        _add_spec_args(p)
        p.set_defaults(func=_not_landed(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"zerotune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`zerotune` command line: validate, show, schema, train, tune, serve, run.

A user error (UserError) prints one message and exits 2; anything else is a bug and keeps its
traceback (exit 1). Ray is only started by the commands that need a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from trainers.console import say, show

from .config import ray_runtime_env
from .errors import UserError
from .loader import load_spec
from .plan import launch_check
from .spec import ExperimentSpec


def _cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.file, args.overrides)
    tune = f", tune: {len(spec.tune.search_space)} searched field(s)" if spec.tune else ""
    show(f"{args.file}: OK ({spec.name}: {spec.train.model.task}, {spec.train.scaling.num_workers} worker(s), "
          f"{spec.train.engine_label}{', LoRA' if spec.train.lora.enabled else ''}{tune})")
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
    show(yaml.safe_dump(doc, sort_keys=False))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    show(json.dumps(ExperimentSpec.model_json_schema(), indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainers.launch import fit, resolve_storage

    from .connect import connect

    spec = load_spec(args.file, args.overrides)
    launch_check(spec)  # a job no node can hold stops here with the plan's table (exit 2), before Ray starts
    resolve_storage(spec.cluster.storage_path)  # a wrong path, bucket or credential fails before Ray starts
    say(str(connect(spec.cluster)))
    result = fit(spec.train, storage_path=spec.cluster.storage_path, name=spec.name)
    metric = spec.train.resolved_metric
    best = result.best.value(metric) if result.best else None
    final = result.final.eval if result.final else {}
    show(f"\n[zerotune] {spec.name}: finished at step {result.final.step if result.final else 0}\n"
         f"  run directory:    {result.run_dir}\n"
         f"  best checkpoint:  {result.best_checkpoint} ({metric} {best if best is not None else float('nan'):.4f})\n"
         f"  latest:           {result.latest_checkpoint}\n"
         f"  final metrics:    { {k: round(v, 4) for k, v in final.items()} }\n"
         f"  tensorboard:      tensorboard --logdir {_tensorboard_dir(result.run_dir)}")
    return 0


def _tensorboard_dir(run_dir: str) -> str:
    from trainers.storage import Location

    return str(Location.parse(run_dir).join("tensorboard"))


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import serve_config, start
    from serving.client import example_request
    from trainers.checkpoint import read_manifest

    from .connect import connect

    spec = load_spec(args.file, args.overrides)
    checkpoint = args.checkpoint or best_checkpoint(spec)
    if args.emit_config:
        config = serve_config(checkpoint, spec.serving)
        env = ray_runtime_env(spec.cluster.runtime_env)  # what every replica needs, as for the jobs
        if env:
            config["applications"][0]["runtime_env"] = env
        Path(args.emit_config).parent.mkdir(parents=True, exist_ok=True)  # as `cluster render --out` does
        Path(args.emit_config).write_text(yaml.safe_dump(config, sort_keys=False))
        say(f"wrote a Serve config for `serve deploy {args.emit_config}`")
        return 0
    task = read_manifest(checkpoint).task
    conn = connect(spec.cluster)
    url = start(checkpoint, spec.serving)
    say(f"serving {checkpoint}\n  at {url}  (OpenAPI docs: {url}/docs)\n"
        f"  try: {example_request(url, task, spec.serving)}")
    if conn.embedded and not args.detach:
        _wait_for_interrupt(spec.serving.app_name)
    return 0


def best_checkpoint(spec: ExperimentSpec) -> str:
    """The sweep winner's checkpoint from <storage>/<name>/best.json."""
    from trainers.storage import Location
    from tuning.sweep import BEST_FILE, read_winner

    exp = Location.parse(spec.cluster.storage_path).join(spec.name)
    winner = read_winner(exp)
    if winner is None:
        raise UserError(f"no sweep winner at {exp.join(BEST_FILE)}. Run `zerotune tune {spec.name}.yaml` "
                        "(or `zerotune run`) first, or pass --checkpoint PATH")
    return winner.checkpoint


def _wait_for_interrupt(app_name: str) -> None:
    """An embedded Ray ends with this process: keep serving until Ctrl-C, then drain and stop."""
    import time

    from ray import serve

    say("serving until Ctrl-C")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        serve.delete(app_name)


def _cmd_submit(args: argparse.Namespace) -> int:
    from .submit import submit

    spec = load_spec(args.file, args.overrides)  # a bad spec fails here, not on the cluster
    job_id, status = submit(spec, args.file, args.overrides, command=args.command_name, address=args.address,
                            working_dir=args.working_dir, follow=not args.no_follow)
    say(f"job {job_id}: {status}")
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def _cmd_cluster_render(args: argparse.Namespace) -> int:
    from .render import render

    spec = load_spec(args.file, args.overrides)
    files = render(spec, args.provider, spec_path=args.file, overrides=args.overrides,
                   checkpoint=args.checkpoint, working_dir=args.working_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        say(f"wrote {out / name}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import format_summary, run_job

    spec = load_spec(args.file, args.overrides)
    summary = run_job(spec, resume=args.resume)
    show(format_summary(summary))
    from .connect import describe

    if summary.url and describe().embedded and not args.exit:
        _wait_for_interrupt(spec.serving.app_name)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from tuning.sweep import run_sweep

    from .connect import connect

    spec = load_spec(args.file, args.overrides)
    if spec.tune is None:
        raise UserError(f"{args.file} has no tune: section; add one (see examples/quickstart.yaml) or use "
                        "`zerotune train`")
    from trainers.launch import resolve_storage

    plan = launch_check(spec)  # before Ray starts; its memory estimate also caps the trials run at once
    resolve_storage(spec.cluster.storage_path)  # a wrong path, bucket or credential fails before Ray starts
    connect(spec.cluster)
    result = run_sweep(spec.tune, spec.train, storage_path=spec.cluster.storage_path, name=spec.name,
                       resume=args.resume, trials_by_memory=plan.trials_by_memory)
    from .report_html import serve_command, write_sweep_report

    report = write_sweep_report(spec, result)
    say(f"report: {report} (winner, trials, plots); best.json and trials.csv beside it")
    from trainers.storage import Location

    say(f"tensorboard: tensorboard --logdir {Location.parse(result.path).join('runs')}")
    say(f"serve the winner: {serve_command(spec, result.best.checkpoint)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from trainers.export import export

    result = export(args.checkpoint, args.out, merge=args.merge, dtype=args.dtype, onnx=args.onnx, int8=args.int8,
                    device=args.device, tolerance=args.tolerance)
    for c in result.checks:
        say(f"checked {c.artifact} ({c.dtype}): largest logit difference from probe.json {c.max_abs_diff:.3g} "
            f"<= {c.tolerance:g}; {c.same_argmax:.0%} of top outputs unchanged")
    show(f"exported {args.checkpoint} -> {args.out} ({result.kind}, {result.dtype}"
         f"{', onnx' if result.onnx else ''}{', int8' if result.int8 else ''}); export.json holds the checks")
    return 0


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

    p = sub.add_parser("serve", help="serve a checkpoint (or the sweep winner) with Ray Serve")
    _add_spec_args(p)
    p.add_argument("--checkpoint", help="a zerotune checkpoint directory (default: the sweep winner in "
                   "<storage>/<name>/best.json)")
    p.add_argument("--emit-config", metavar="FILE", help="write a Serve config for `serve deploy` and exit")
    p.add_argument("--detach", action="store_true", help="return once deployed (embedded Ray stops with it)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("submit", help="submit the job to a running Ray cluster (Jobs API) and follow its logs")
    _add_spec_args(p)
    p.add_argument("--address", help=f"Jobs API address (default: RAY_API_SERVER_ADDRESS or {'http://127.0.0.1:8265'})")
    p.add_argument("--command", dest="command_name", default="run", choices=["run", "train", "tune"],
                   help="what the cluster runs (default: run)")
    p.add_argument("--working-dir", default=".", help="directory shipped with the job (default: .)")
    p.add_argument("--no-follow", action="store_true", help="return after submitting")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("cluster", help="cluster descriptions rendered from the spec")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    p = csub.add_parser("render", help="write a Ray cluster-launcher YAML (aws, gcp) or KubeRay manifests")
    _add_spec_args(p)
    p.add_argument("--provider", choices=["aws", "gcp", "kuberay"], help="default: cluster.provider")
    p.add_argument("--out", default=".", help="directory to write into (default: .)")
    p.add_argument("--checkpoint", help="kuberay: the checkpoint the RayService serves")
    p.add_argument("--working-dir", help="kuberay: URI of the zipped working directory")
    p.set_defaults(func=_cmd_cluster_render)

    p = sub.add_parser("export", help="merge, cast or export a checkpoint to ONNX, checked against its probe")
    p.add_argument("checkpoint", help="a zerotune checkpoint directory or URI")
    p.add_argument("--out", required=True, help="a new directory or s3:// / gs:// URI")
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base (in fp32)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="cast the weights once")
    p.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (classification, NER)")
    p.add_argument("--int8", action="store_true", help="also write onnx/model.int8.onnx (implies --onnx)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the cast model is checked")
    p.add_argument("--tolerance", type=float, help="largest logit difference from probe.json allowed "
                   "(default per artifact: fp32 1e-3, fp16 2e-2, bf16 0.1, ONNX 1e-3, ONNX int8 0.5)")
    p.set_defaults(func=_cmd_export)

    from .plan import add_plan_command

    add_plan_command(sub)  # `zerotune plan exp.yaml`: memory per worker per ZeRO stage, and what fits

    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune; writes best.json and a report")
    _add_spec_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("run", help="tune (or train), pick the winner, serve it, score held-out data")
    _add_spec_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.add_argument("--exit", action="store_true", help="exit after the summary instead of serving until Ctrl-C")
    p.set_defaults(func=_cmd_run)
    _add_manners(parser, sub)
    return parser


# Commands that start Ray: a quiet console and a log file under the run directory (cluster/output.py).
_CONSOLE_COMMANDS = ("train", "tune", "serve", "run")
_EXAMPLES = {
    "validate": "zerotune validate examples/quickstart.yaml train.optim.lr=1e-4",
    "show": "zerotune show examples/quickstart.yaml train.scaling.num_workers=2",
    "schema": "zerotune schema > zerotune.schema.json",
    "train": "zerotune train examples/smoke.yaml train.schedule.max_steps=50",
    "serve": "zerotune serve examples/quickstart.yaml --checkpoint ~/zerotune_results/quickstart/runs/...",
    "submit": "zerotune submit examples/quickstart.yaml --address http://HEAD:8265",
    "cluster": "zerotune cluster render examples/quickstart.yaml --provider aws --out cluster/aws",
    "tune": "zerotune tune examples/quickstart.yaml --resume",
    "run": "zerotune run examples/quickstart.yaml --exit",
    "export": "zerotune export ~/zerotune_results/quickstart/runs/.../checkpoint_000075 --out winner --merge --int8",
    "plan": "zerotune plan examples/llama-lora-zero3-gpu.yaml train.schedule.micro_batch_size=4",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zerotune")
    except PackageNotFoundError:  # run from a shipped working directory without an install
        return "unknown (not installed)"


def _add_manners(parser: argparse.ArgumentParser, sub) -> None:
    """--version, -v/--verbose for the commands that start Ray, and an example under every --help."""
    parser.add_argument("--version", action="version", version=f"zerotune {_version()}")
    parser.epilog = "example:\n  " + _EXAMPLES["run"] + "\n\n`zerotune COMMAND --help` shows each command's options."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for name, p in sub.choices.items():
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = f"example:\n  {_EXAMPLES[name]}" if name in _EXAMPLES else None
        if name in _CONSOLE_COMMANDS:
            p.add_argument("-v", "--verbose", action="store_true",
                           help="show Ray's, DeepSpeed's and transformers' own output here (default: only "
                           "zerotune's lines; the rest goes to the log file named on the first line)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Overrides may come before or after options: `zerotune serve exp.yaml --checkpoint CK serve.port=9000`
    (argparse alone stops collecting the positional overrides at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from contextlib import nullcontext

    from trainers import console

    from .output import session

    args = parse_args(argv)
    try:
        with (session(load_spec(args.file, args.overrides), args.command, verbose=args.verbose,
                      spec_file=args.file, overrides=args.overrides)
              if args.command in _CONSOLE_COMMANDS else nullcontext()):
            return args.func(args)
    except UserError as err:
        console.error(f"zerotune {args.command}: error: {err}")
        return 2
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

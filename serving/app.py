"""The one way a checkpoint becomes a Serve application.

`build_app` is what `zerotune serve` (through `start`), `serve run serving.app:build_app
checkpoint=PATH` and `serve deploy` (through the config `serve_config` writes) all call. It checks
the checkpoint on the driver, so a wrong path fails here with a clear message instead of in a
replica that Serve restarts over and over. Nothing here connects to Ray: callers do that first.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.checkpoint import MODEL_DIR, read_manifest
from trainers.errors import CheckpointError, UserError

from .config import ServeSection

log = logging.getLogger(__name__)
IMPORT_PATH = "serving.app:build_app"


class BuildArgs(BaseModel):
    """`build_app`'s args; from `serve run` they arrive as strings (checkpoint=PATH)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = Field(description="A zerotune checkpoint directory (one with zerotune.json).")
    serve: ServeSection = Field(default_factory=ServeSection, description="The `serve:` section.")


def parse_args(args: dict[str, Any]) -> BuildArgs:
    try:
        return BuildArgs.model_validate(args)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'args'}: {e['msg']}" for e in err.errors(include_input=False)
        )
        raise UserError(f"serving.app:build_app got invalid args: {problems}") from None


def checked_checkpoint(path: str | Path) -> Path:
    """The checkpoint's absolute path (replicas may run in another working directory), after
    checking that it is a servable zerotune checkpoint."""
    p = Path(path).expanduser().resolve()
    read_manifest(p)  # raises CheckpointError naming what is there instead
    model_dir = p / MODEL_DIR
    if not ((model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file()):
        raise CheckpointError(
            f"{p} has a manifest but no servable model under {MODEL_DIR}/ (config.json or adapter_config.json); "
            "was it copied partially?"
        )
    return p


def deployment_options(serve: ServeSection) -> dict[str, Any]:
    """Serve deployment options from the `serve:` section."""
    options: dict[str, Any] = {
        "max_ongoing_requests": serve.max_ongoing_requests,
        "max_queued_requests": serve.max_queued_requests,  # beyond it the proxy answers 503 at once
        "ray_actor_options": {"num_cpus": serve.num_cpus_per_replica, "num_gpus": serve.num_gpus_per_replica},
        "graceful_shutdown_timeout_s": serve.graceful_shutdown_timeout_s,
        "health_check_period_s": serve.health_check_period_s,
    }
    if serve.max_replicas > serve.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": serve.min_replicas,
            "max_replicas": serve.max_replicas,
            "initial_replicas": max(serve.min_replicas, 1),  # answer the first request without a cold start
            "target_ongoing_requests": serve.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = serve.max_replicas
    return options


def build_app(args: dict[str, Any]):
    """args: {"checkpoint": PATH, "serve": {ServeSection fields}} -> a bound Serve Application."""
    from .deployment import ModelServer

    parsed = parse_args(args)
    checkpoint = checked_checkpoint(parsed.checkpoint)
    spec = parsed.serve
    return ModelServer.options(**deployment_options(spec)).bind(str(checkpoint), spec.model_dump(mode="json"))


def base_url(serve: ServeSection) -> str:
    host = "127.0.0.1" if serve.host in ("0.0.0.0", "") else serve.host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{serve.port}{serve.route_prefix.rstrip('/')}"


def start(checkpoint: str | Path, serve_section: ServeSection | None = None, *, blocking: bool = False) -> str:
    """Deploy the checkpoint on the connected Ray cluster and return the app's base URL.

    blocking=True then waits until Ctrl-C and deletes the app (draining in-flight requests)."""
    import ray
    from ray import serve

    spec = serve_section or ServeSection()
    if not ray.is_initialized():
        raise UserError("connect to Ray before serving (cluster.connect.connect); serving.app.start does not")
    app = build_app({"checkpoint": str(checkpoint), "serve": spec.model_dump(mode="json")})
    serve.start(http_options={"host": spec.host, "port": spec.port})
    _check_http_options(spec)
    serve.run(app, name=spec.app_name, route_prefix=spec.route_prefix)
    url = base_url(spec)
    if blocking:
        log.info("serving %s at %s (Ctrl-C stops it)", checkpoint, url)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            serve.delete(spec.app_name)
    return url


def _check_http_options(spec: ServeSection) -> None:
    """Serve's HTTP options are fixed when Serve first starts on a cluster; a different host or
    port would be ignored silently and the returned URL would be wrong."""
    from ray.serve.context import _get_global_client  # no public getter for the live HTTP options

    live = getattr(_get_global_client(), "http_config", None)
    if live is not None and (live.host, live.port) != (spec.host, spec.port):
        raise UserError(
            f"Serve already runs on this cluster at {live.host}:{live.port}; serve.host/port "
            f"({spec.host}:{spec.port}) cannot change until it stops (`serve shutdown`). Use that address or "
            "stop Serve first."
        )


def serve_config(checkpoint: str | Path, serve_section: ServeSection | None = None) -> dict[str, Any]:
    """A Serve config (write it as YAML) that `serve deploy` turns into the same app as `start`."""
    spec = serve_section or ServeSection()
    path = checked_checkpoint(checkpoint)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": spec.host, "port": spec.port},
        "applications": [
            {
                "name": spec.app_name,
                "route_prefix": spec.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"checkpoint": str(path), "serve": spec.model_dump(mode="json", exclude_defaults=True)},
            }
        ],
    }

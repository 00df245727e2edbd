"""The one way a checkpoint becomes a Serve application.

`build_app` is what `zerotune serve` (through `start`), `serve run serving.app:build_app
checkpoint=PATH` and `serve deploy` (through the config `serve_config` writes) all call. It checks
the checkpoint on the driver, so a wrong path fails here with a clear message instead of in a
replica that Serve restarts over and over. Nothing here connects to Ray: callers do that first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.checkpoint import MODEL_DIR, read_manifest
from trainers.errors import CheckpointError, UserError
from trainers.storage import Location

from .config import ServeSection
from .proxy import controller_env

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


def checked_checkpoint(path: str | Path) -> Location:
    """The checkpoint's location, absolute (replicas may run in another working directory) or a cloud
    URI (each replica's node copies it once, trainers.storage.cached_copy), after checking on the
    driver that it is a servable zerotune checkpoint."""
    loc = Location.parse(path)
    read_manifest(loc)  # raises CheckpointError naming what is there instead
    model_dir = loc.join(MODEL_DIR)
    if not (model_dir.join("config.json").is_file() or model_dir.join("adapter_config.json").is_file()):
        raise CheckpointError(
            f"{loc} has a manifest but no servable model under {MODEL_DIR}/ (config.json or adapter_config.json); "
            "was it copied partially?"
        )
    return loc


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
    serve = with_checked_adapters(str(checkpoint), parsed.serve)
    return ModelServer.options(**deployment_options(serve)).bind(str(checkpoint), serve.model_dump(mode="json"))


def with_checked_adapters(checkpoint: Path, serve: ServeSection) -> ServeSection:
    """The section with every adapter checked against the checkpoint (same base, task and labels:
    refused here, with the reasons, rather than in replicas) and its path made absolute."""
    from .adapters import check_adapters

    if not serve.adapters:
        return serve
    adapters = [a.model_copy(update={"checkpoint": str(checked_checkpoint(a.checkpoint))}) for a in serve.adapters]
    check_adapters(checkpoint, adapters)
    return serve.model_copy(update={"adapters": adapters})


def base_url(serve: ServeSection) -> str:
    host = "127.0.0.1" if serve.host in ("0.0.0.0", "") else serve.host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{serve.port}{serve.route_prefix.rstrip('/')}"


def start(checkpoint: str | Path, serve: ServeSection) -> str:
    """Deploy the checkpoint on the connected Ray cluster and return the app's base URL."""
    import ray
    from ray import serve as ray_serve

    if not ray.is_initialized():
        raise UserError("connect to Ray before serving (cluster.connect.connect); serving.app.start does not")
    app = build_app({"checkpoint": str(checkpoint), "serve": serve.model_dump(mode="json")})
    # the controller's environment reaches the proxies: Serve's own errors (503 ...) become JSON
    ray_serve.start(http_options={"host": serve.host, "port": serve.port}, controller_options=controller_env())
    _check_http_options(serve)
    ray_serve.run(app, name=serve.app_name, route_prefix=serve.route_prefix)
    return base_url(serve)


def _check_http_options(serve: ServeSection) -> None:
    """Serve's HTTP options are fixed when Serve first starts on a cluster; a different host or
    port would be ignored silently and the returned URL would be wrong."""
    from ray.serve.context import _get_global_client  # no public getter for the live HTTP options

    live = getattr(_get_global_client(), "http_config", None)
    if live is not None and (live.host, live.port) != (serve.host, serve.port):
        raise UserError(
            f"Serve already runs on this cluster at {live.host}:{live.port}; serve.host/port "
            f"({serve.host}:{serve.port}) cannot change until it stops (`serve shutdown`). Use that address or "
            "stop Serve first."
        )


def serve_config(checkpoint: str | Path, serve: ServeSection) -> dict[str, Any]:
    """A Serve config (write it as YAML) that `serve deploy` turns into the same app as `start`."""
    path = checked_checkpoint(checkpoint)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": serve.host, "port": serve.port},
        "controller_options": controller_env(),  # see serving/proxy.py
        "applications": [
            {
                "name": serve.app_name,
                "route_prefix": serve.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"checkpoint": str(path),
                         "serve": with_checked_adapters(str(path), serve).model_dump(mode="json", exclude_defaults=True)},
            }
        ],
    }

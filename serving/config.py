"""The `serve:` section: how the winning checkpoint is put behind HTTP."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainers.config import Section

_URL_PATH = re.compile(r"/|(/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AdapterSpec(Section):
    """One more LoRA adapter served on the same base model as the app's checkpoint."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="What requests put in their `model` field (or '<app_name>:<name>') to get this adapter.",
    )
    checkpoint: str = Field(
        description="A zerotune checkpoint of kind 'adapter' (LoRA, not merged) with the same base model, task "
        "and labels as the app's checkpoint.",
    )


class ServeSection(Section):
    host: str = Field(default="127.0.0.1", description="HTTP bind address; loopback unless you open it on purpose.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field(
        default="/", description="URL prefix of the app: '/' or '/a/b' (Ray Serve's rules: a leading '/', no "
        "trailing '/', no '{' or '}')."
    )
    app_name: str = Field(default="zerotune", pattern=r"^[A-Za-z0-9_.-]+$", description="Serve application name.")
    max_batch_size: int = Field(default=16, ge=1, description="Most inputs, across requests, in one forward pass.")
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0.0,
        description="Extra time a batch waits to fill. 0 still batches under load (requests that arrive "
        "during a forward pass share the next one) and adds no latency to a lone request.",
    )
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling floor.")
    max_replicas: int = Field(default=1, ge=1, description="Autoscaling ceiling.")
    target_ongoing_requests: float = Field(default=4.0, gt=0, description="Autoscaling target per replica.")
    max_ongoing_requests: int = Field(
        default=256, ge=1,
        description="Requests a replica holds at once; they wait inside it for a batch. Keep it well above "
        "max_batch_size: beyond it requests wait in the proxy, which retries with backoff (up to 0.5 s).",
    )
    max_queued_requests: int = Field(
        default=256, ge=-1,
        description="Requests waiting in the proxy (all replicas full) before it answers 503 at once; -1: unbounded.",
    )
    num_cpus_per_replica: float = Field(default=1.0, gt=0, description="CPUs per replica.")
    num_gpus_per_replica: float = Field(default=0.0, ge=0, description="GPU (fraction) per replica.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Inference dtype; 'auto': fp32 on CPU, bf16 on GPU."
    )
    quantize: Literal["none", "int8"] = Field(
        default="none", description="'int8': dynamic int8 quantization of Linear layers (CPU serving)."
    )
    backend: Literal["torch", "onnx"] = Field(
        default="torch", description="'onnx': ONNX Runtime on CPU (classification and NER), from the checkpoint's "
        "`zerotune export --onnx` files when it has them, else exported when a replica loads it; with "
        "quantize 'int8' the ONNX model is dynamically quantized. Same routes, batching and probe check.",
    )
    auth_token_env: str | None = Field(
        default=None, description="Environment variable holding a bearer token the endpoint requires."
    )
    auth_token_file: str | None = Field(
        default=None, description="File holding a bearer token the endpoint requires (never the token itself)."
    )
    max_items_per_request: int = Field(default=64, ge=1, description="Inputs per request; more answers 422.")
    max_chars_per_item: int = Field(default=4000, ge=1, description="Characters per input; more answers 422.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Request body size; more answers 413.")
    max_new_tokens: int = Field(default=256, ge=1, description="Ceiling on max_tokens for completions.")
    graceful_shutdown_timeout_s: float = Field(
        default=20.0, ge=0, description="How long a stopping replica drains in-flight requests before it is killed."
    )
    health_check_period_s: float = Field(
        default=10.0, gt=0, description="Seconds between replica health checks (each runs the model on a tiny input)."
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        description="More LoRA adapters of the checkpoint's base, served by the same replicas: one base model per "
        "replica, the adapter chosen per request by its `model` field (Ray Serve model multiplexing; send the "
        "'serve_multiplexed_model_id' header too and requests go to replicas that already hold the adapter). "
        "The app's checkpoint must then be an adapter checkpoint as well.",
    )
    max_adapters_per_replica: int = Field(
        default=4, ge=1, description="Adapters (beyond the app's own) a replica keeps loaded; least recently used "
        "ones are unloaded first.",
    )

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, v: str) -> str:
        # Ray Serve checks the first three only when the app deploys, with a traceback.
        if not v.startswith("/"):
            raise ValueError(f"route_prefix must start with '/'; use {'/' + v.rstrip('/')!r}")
        if v != "/" and v.endswith("/"):
            raise ValueError(f"route_prefix must not end with '/' (except '/' itself); use {v.rstrip('/') or '/'!r}")
        if "{" in v or "}" in v:
            raise ValueError("route_prefix cannot hold Serve wildcards ('{' or '}'); use a fixed path like '/api'")
        if "//" in v or not _URL_PATH.fullmatch(v):
            raise ValueError("route_prefix must be a URL path: '/'-separated, non-empty segments of letters, "
                             "digits and - . _ ~ (no spaces, '?' or '#')")
        return v

    @field_validator("auth_token_env", "auth_token_file")
    @classmethod
    def _token_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        # An empty name would read as "no auth" downstream: refuse it rather than serve an open endpoint.
        # Messages never repeat the value: a careless user may have pasted the token itself.
        what = "environment variable" if info.field_name == "auth_token_env" else "file"
        if v is not None and not v.strip():
            raise ValueError(f"{info.field_name} is empty, which would serve without auth; name the {what} that "
                             "holds the token, or remove the key to serve without one")
        if v is not None and info.field_name == "auth_token_env" and not _ENV_NAME.fullmatch(v):
            raise ValueError("auth_token_env must be an environment variable's name (letters, digits, '_'; not "
                             "starting with a digit), the variable that holds the token, not the token itself")
        return v

    @model_validator(mode="after")
    def _replicas(self) -> ServeSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        if self.auth_token_env and self.auth_token_file:
            raise ValueError("set one of auth_token_env or auth_token_file, not both")
        names = [a.name for a in self.adapters]
        repeated = sorted({n for n in names if names.count(n) > 1} | ({self.app_name} & set(names)))
        if repeated:
            raise ValueError(f"adapter names must be unique and differ from app_name ({self.app_name!r}); "
                             f"repeated: {', '.join(repeated)}")
        if self.adapters and self.quantize != "none":
            raise ValueError("quantize 'int8' cannot be combined with serve.adapters (LoRA runs on fp weights)")
        if self.quantize == "int8" and (self.num_gpus_per_replica > 0 or self.dtype not in ("auto", "fp32")):
            raise ValueError(
                "quantize 'int8' (dynamic, CPU) needs num_gpus_per_replica 0 and dtype 'auto' or 'fp32'; "
                f"got num_gpus_per_replica {self.num_gpus_per_replica} and dtype {self.dtype!r}"
            )
        if self.backend == "onnx" and (self.num_gpus_per_replica > 0 or self.dtype not in ("auto", "fp32")
                                       or self.adapters):
            raise ValueError(
                "backend 'onnx' runs fp32 (or quantize 'int8') on CPU, one model per app: it needs "
                "num_gpus_per_replica 0, dtype 'auto' or 'fp32' and no serve.adapters; use backend 'torch' for those"
            )
        return self

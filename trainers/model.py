"""Model and tokenizer builders: where a model comes from, which head it gets, LoRA or not."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .config import LoraSection, ModelSection
from .errors import ModelNotFoundError
from .tasks import Task, get_task


def resolve_package_path(uri: str) -> Path:
    """pkg://<package>/<relative path> -> the file or dir inside that installed package.

    The package is located without importing it (its __init__ may be slow or have side effects).
    """
    rest = uri.removeprefix("pkg://")
    package, _, rel = rest.partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{uri}: no installed Python package named {package!r}. Install it (pip install "
            f"{package.replace('_', '-')}) or give a local path."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise ModelNotFoundError(f"{uri}: package {package!r} has no {rel!r} (looked for {path})")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """A local directory for pkg:// and filesystem paths; hub ids pass through unchanged."""
    if name_or_path.startswith("pkg://"):
        return str(resolve_package_path(name_or_path))
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        if not (path / "config.json").is_file() and not (path / "zerotune.json").is_file():
            raise ModelNotFoundError(
                f"model {name_or_path!r}: looked for a Hugging Face model directory at {path.resolve()} "
                f"(config.json) and found {'nothing' if not path.exists() else 'no config.json there'}. "
                "Give a directory written by save_pretrained, a zerotune checkpoint, or a hub id."
            )
        return str(path.resolve())
    return name_or_path


def is_local_name(name_or_path: str) -> bool:
    """A pkg:// URI or a filesystem path, rather than a hub id."""
    return name_or_path.startswith(("pkg://", "/", ".", "~")) or Path(name_or_path).expanduser().exists()


def portable_base(name_or_path: str) -> str:
    """The base an adapter's adapter_config.json names: something peft and transformers open by themselves.
    A hub id or a path stays as the spec gave it; `pkg://` (zerotune's own scheme) becomes the package's
    directory on this machine. zerotune itself reads the spec's name from zerotune.json instead."""
    return str(resolve_package_path(name_or_path)) if name_or_path.startswith("pkg://") else name_or_path


def load_tokenizer(path: str, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as err:
        raise ModelNotFoundError(f"tokenizer for {path!r} could not be loaded: {err}") from None
    if tok.pad_token is None:  # decoder-only models often ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(
    path: str, task: Task, labels: list[str] | None, *, trust_remote_code: bool = False,
    revision: str | None = None, attn_implementation: str = "auto", dtype: Any = None,
):
    """A transformers model with the task's head, from safetensors weights only."""
    import transformers

    auto = getattr(transformers, task.auto_class)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True,
                              **task.head_kwargs(labels)}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return auto.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"model {path!r} could not be loaded: {err}") from None


def prepare_for_training(model, model_spec: ModelSection, lora: LoraSection):
    """Gradient checkpointing and LoRA adapters (via peft) on a loaded model, as the spec asks."""
    task = get_task(model_spec.task)
    task.prepare_model(model)
    if model_spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.enabled:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=getattr(TaskType, task.peft_task_type),
            r=lora.r,
            lora_alpha=lora.resolved_alpha,
            lora_dropout=lora.dropout,
            # None lets peft pick the architecture's attention projections (query/value, q_proj/v_proj, ...)
            target_modules=lora.target_modules,
        )
        if model_spec.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, config)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total

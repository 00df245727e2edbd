"""The checkpoint contract: one writer (the training loop), one reader (`load_for_inference`).

A zerotune checkpoint directory describes itself:

    zerotune.json   manifest: format, task, kind (full | adapter | merged), base model, labels,
                    step, epoch, metrics, parameter counts
    spec.json       the resolved `train:` section it was trained with
    model/          servable Hugging Face files (safetensors) and tokenizer files: a full model,
                    merged LoRA weights, or a LoRA adapter whose adapter_config names its base
    probe.json      a few encoded inputs and the live model's outputs on them at save time, so
                    any reader can check that it loaded the same function
    state/          DeepSpeed engine state (every rank's shard) and trainer_state.json (resume)

Serving needs only the path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Task, TrainSection
from .errors import CheckpointError
from .model import load_base_model, load_tokenizer, resolve_model_path

FORMAT_VERSION = 1
MANIFEST = "zerotune.json"
SPEC = "spec.json"
MODEL_DIR = "model"
STATE_DIR = "state"
PROBE = "probe.json"
TRAINER_STATE = "trainer_state.json"
DIVERGED = "diverged.json"  # marker of a run stopped by a NaN/inf loss: no model inside


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(description="Checkpoint format version.")
    task: Task
    kind: Literal["full", "adapter", "merged"]
    base_model: str = Field(description="The spec's model.name_or_path (the adapter's base).")
    labels: list[str] | None
    step: int
    epoch: float
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    lora_r: int | None = None


def write_servable(
    path: Path, *, model, tokenizer, train: TrainSection, labels: list[str] | None, step: int, epoch: float,
    metrics: dict[str, float], params: tuple[int, int], probe: dict[str, Any] | None,
) -> Manifest:
    """Rank 0 writes everything but the DeepSpeed state. Under ZeRO-3 call it inside a
    GatheredParameters context so `model` holds full weights."""
    path.mkdir(parents=True, exist_ok=True)
    model_dir = path / MODEL_DIR
    lora = train.lora.enabled
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    kind: Literal["full", "adapter", "merged"] = "adapter" if lora else "full"
    (path / SPEC).write_text(train.model_dump_json(indent=2))
    manifest = Manifest(
        format=FORMAT_VERSION, task=train.model.task, kind=kind, base_model=train.model.name_or_path,
        labels=labels, step=step, epoch=epoch, metrics={k: float(v) for k, v in metrics.items()},
        trainable_params=params[0], total_params=params[1], lora_r=train.lora.r if lora else None,
    )
    (path / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    if probe is not None:
        (path / PROBE).write_text(json.dumps(probe))
    if lora and train.lora.merge_on_save:
        merged, _, _ = load_for_inference(path)
        shutil.rmtree(model_dir)
        merged.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        manifest = manifest.model_copy(update={"kind": "merged"})
        (path / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    p = Path(path).expanduser()
    if not (p / MANIFEST).is_file():
        there = sorted(x.name for x in p.iterdir())[:12] if p.is_dir() else []
        hint = f" It holds: {', '.join(there)}." if there else " It does not exist." if not p.exists() else ""
        raise CheckpointError(
            f"{p} is not a zerotune checkpoint (no {MANIFEST}).{hint} Point at a checkpoint_* directory "
            "written by `zerotune train`, or at best.json's checkpoint after `zerotune tune`."
        )
    return Manifest.model_validate_json((p / MANIFEST).read_text())


def read_spec(path: str | Path) -> TrainSection:
    return TrainSection.model_validate_json((Path(path).expanduser() / SPEC).read_text())


def read_probe(path: str | Path) -> dict[str, Any]:
    """The inputs and live-model outputs saved with the checkpoint (see module docstring)."""
    return json.loads((Path(path).expanduser() / PROBE).read_text())


def load_for_inference(path: str | Path, *, dtype: Any = None):
    """(model, tokenizer, train spec) from a checkpoint; LoRA adapters are merged into the base."""
    p = Path(path).expanduser()
    manifest = read_manifest(p)
    spec = read_spec(p)
    model_dir = str(p / MODEL_DIR)
    tokenizer = load_tokenizer(model_dir)
    if manifest.kind == "adapter":
        from peft import PeftModel

        base = load_base_model(
            resolve_model_path(manifest.base_model), manifest.task, manifest.labels,
            trust_remote_code=spec.model.trust_remote_code, dtype=dtype,
        )
        model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    else:
        model = load_base_model(model_dir, manifest.task, manifest.labels,
                                trust_remote_code=spec.model.trust_remote_code, dtype=dtype)
    model.eval()
    return model, tokenizer, spec

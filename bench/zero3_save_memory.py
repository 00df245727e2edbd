"""Peak memory of writing the servable copy under ZeRO-3, before and after (issue 11, part 6).

Before: every rank gathered every parameter of the model (`GatheredParameters(all)`) at every save.
After (trainers/loop.py): an adapter gathers only its trainable parameters; a full model is
consolidated one layer at a time onto rank 0 (`_zero3_consolidated_16bit_state_dict`).

Two processes (gloo, CPU), DeepSpeed ZeRO-3, a BERT-base-sized model built from its config (110M
parameters, no download). A sampling thread records each rank's peak RSS above its level before the
save. Run: python bench/zero3_save_memory.py  -> bench/results/zero3_save_memory.{json,md}
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PeakRss:
    """Peak resident memory above the level at start, sampled every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.base = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _engine(lora: bool):
    import deepspeed
    import torch
    import transformers as tf

    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(num_labels=3))  # BERT-base: 110M, as the loop builds it
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, target_modules=["query", "value"]))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=_ds_config())
    batch = {"input_ids": torch.randint(0, 1000, (2, 16)), "labels": torch.tensor([0, 1])}
    engine.backward(engine(**batch).loss)
    engine.step()
    return engine


def _ds_config() -> dict:
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}


def _save(engine, how: str, out: Path, rank: int) -> None:
    import deepspeed

    module = engine.module
    if how == "before":
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                module.save_pretrained(out, safe_serialization=True)
    elif how == "after-adapter":
        trainable = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if rank == 0:
                module.save_pretrained(out, safe_serialization=True)
    else:  # after-full
        state = engine._zero3_consolidated_16bit_state_dict()
        if rank == 0:
            module.save_pretrained(out, state_dict=state, safe_serialization=True)


VARIANTS = {"lora before": (True, "before"), "lora after": (True, "after-adapter"),
            "full before": (False, "before"), "full after": (False, "after-full")}


def worker(rank: int, port: int, variant: str, results) -> None:
    """One variant per pair of fresh processes: memory a process freed stays in its RSS."""
    import deepspeed
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    import torch.distributed as dist

    lora, how = VARIANTS[variant]
    engine = _engine(lora)
    out = Path(tempfile.mkdtemp(prefix="zt-save-"))
    dist.barrier()
    with PeakRss() as peak:
        _save(engine, how, out, rank)
        dist.barrier()
    shutil.rmtree(out, ignore_errors=True)
    results[rank] = peak.peak / 2**20


def main() -> None:
    import torch.multiprocessing as mp

    from tests.net import free_port

    manager = mp.Manager()
    table = {}
    for variant in VARIANTS:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), variant, results), nprocs=2, join=True)
        table[variant] = [results[0], results[1]]
    lines = ["| save | rank 0 peak MB | rank 1 peak MB |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.0f} | {v[1]:.0f} |" for k, v in table.items()]
    ratios = {kind: max(table[f"{kind} after"]) / max(max(table[f"{kind} before"]), 1e-9) for kind in ("lora", "full")}
    lines += ["", f"after/before, worst rank: LoRA adapter {ratios['lora']:.3f}x, full model {ratios['full']:.3f}x",
              "(BERT-base 110M params, ZeRO-3, 2 CPU processes, fp32; peak RSS above the level before the save)"]
    out = ROOT / "bench" / "results"
    (out / "zero3_save_memory.json").write_text(json.dumps({"peak_mb": table, "ratios": ratios}, indent=2))
    (out / "zero3_save_memory.md").write_text("# ZeRO-3 save memory\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

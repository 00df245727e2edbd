"""The DeepSpeed dict is rendered from the spec: its batch sizes and lr cannot disagree with ours."""

from __future__ import annotations

import pytest

from trainers.config import TrainSection
from trainers.deepspeed import render_config, resolve_precision


def _train(**sections) -> TrainSection:
    doc = {"model": {"name_or_path": "m", "task": "sequence-classification"}, "data": {"train": "d.csv"}}
    doc.update(sections)
    return TrainSection.model_validate(doc)


def test_batch_and_lr_come_from_the_spec():
    t = _train(schedule={"micro_batch_size": 4, "gradient_accumulation_steps": 3}, optim={"lr": 1e-4},
               scaling={"num_workers": 2})
    c = render_config(t, world_size=2, total_steps=100, precision="fp32", on_gpu=False)
    assert c["train_batch_size"] == 24 == t.global_batch_size
    assert c["train_micro_batch_size_per_gpu"] == 4 and c["gradient_accumulation_steps"] == 3
    assert c["optimizer"]["params"]["lr"] == 1e-4
    assert c["scheduler"]["params"]["warmup_max_lr"] == 1e-4
    assert c["optimizer"]["params"]["torch_adam"] is True  # no CUDA kernels on CPU


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_offload(stage):
    ds = {"zero_stage": stage, "offload_optimizer": stage > 0, "offload_params": stage == 3}
    c = render_config(_train(deepspeed=ds), world_size=2, total_steps=10, precision="bf16", on_gpu=True)
    z = c["zero_optimization"]
    assert z["stage"] == stage
    assert ("offload_optimizer" in z) == (stage > 0)
    assert ("offload_param" in z) == (stage == 3)
    assert c["bf16"]["enabled"] and not c["fp16"]["enabled"]
    assert "torch_adam" not in c["optimizer"]["params"]


def test_offload_params_needs_zero3():
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        _train(deepspeed={"zero_stage": 2, "offload_params": True})


def test_schedules_and_warmup():
    t = _train(schedule={"decay": "cosine", "warmup_ratio": 0.1})
    c = render_config(t, world_size=1, total_steps=200, precision="fp32", on_gpu=False)
    assert c["scheduler"]["type"] == "WarmupCosineLR"
    assert c["scheduler"]["params"]["warmup_num_steps"] == 20
    assert render_config(_train(schedule={"decay": "constant"}), world_size=1, total_steps=5,
                         precision="fp32", on_gpu=False)["scheduler"]["type"] == "WarmupLR"


def test_precision_by_device():
    assert resolve_precision("auto", on_gpu=False, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=False) == "fp16"
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_precision("bf16", on_gpu=False, bf16_supported=False)

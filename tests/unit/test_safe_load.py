"""Resume executes nothing from storage (trainers/safe_load.py), on real DeepSpeed in this process.

World size 1 over gloo (a HashStore, no port): DeepSpeed's real save_checkpoint / load_checkpoint
for ZeRO-2 and ZeRO-3, then a planted pickle whose unpickling would create a marker file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import make_model
from trainers.config import TrainSection
from trainers.deepspeed import render_config
from trainers.errors import UserError
from trainers.safe_load import UnsafeCheckpointError, load_deepspeed_state

TAG = "ds"
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def one_rank():
    """torch.distributed with one gloo rank, for DeepSpeed; torn down so nothing leaks to other tests."""
    import deepspeed.comm.comm as ds_comm
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    with pytest.MonkeyPatch.context() as mp:  # DeepSpeed reads its rank from the environment
        mp.setenv("RANK", "0")
        mp.setenv("LOCAL_RANK", "0")
        mp.setenv("WORLD_SIZE", "1")
        mp.setenv("MASTER_ADDR", "127.0.0.1")
        mp.setenv("MASTER_PORT", "1")  # never dialled: the process group above already exists
        yield
    dist.destroy_process_group()
    ds_comm.cdb = None


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("safe-load") / "bert", "sequence-classification", "bert", LABELS)


def _engine(model_path: str, stage: int):
    import deepspeed
    from transformers import AutoModelForSequenceClassification

    train = TrainSection.model_validate({
        "model": {"name_or_path": model_path, "task": "sequence-classification", "labels": LABELS},
        "data": {"train": "unused.csv"}, "deepspeed": {"zero_stage": stage}, "scaling": {"num_workers": 1}})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path)
    config = render_config(train, world_size=1, total_steps=10, precision="fp32", on_gpu=False)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=config)
    return engine


def _trained_checkpoint(model_path: str, stage: int, out: Path):
    engine = _engine(model_path, stage)
    ids = torch.randint(5, 40, (4, 8))
    loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(str(out), tag=TAG)
    return engine


class _Planted:
    """What an attacker with write access to the bucket would leave: unpickling runs its code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_loads_real_zero_state_with_weights_only(one_rank, model_path, tmp_path, stage):
    before = _trained_checkpoint(model_path, stage, tmp_path / "state")
    calls: list = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    after = _engine(model_path, stage)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        load_deepspeed_state(after, tmp_path / "state", tag=TAG)
    assert calls and all(w is True for w in calls), calls  # every file DeepSpeed read, read safely
    assert after.global_steps == before.global_steps == 1
    assert after.lr_scheduler.state_dict() == before.lr_scheduler.state_dict()
    if stage == 2:  # ZeRO-3 holds partitions; ZeRO-2 keeps whole parameters to compare
        for (name, a), b in zip(after.module.named_parameters(), before.module.parameters(), strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("stage,victim", [(2, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
                                          (3, "zero_pp_rank_0_mp_rank_00_model_states.pt")])
def test_planted_pickle_is_refused_and_runs_nothing(one_rank, model_path, tmp_path, stage, victim):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    state = tmp_path / "state"
    _trained_checkpoint(model_path, stage, state)
    planted = state / TAG / victim
    assert planted.is_file()
    marker = tmp_path / "marker"
    torch.save({"optimizer_state_dict": _Planted(marker)}, planted)

    with pytest.raises(UnsafeCheckpointError) as err:
        load_deepspeed_state(_engine(model_path, stage), state, tag=TAG)
    message = str(err.value)
    assert str(planted) in message and "exec" in message and "would execute" in message, message
    assert "weights_only=False" not in message  # torch's advice to turn the check off is not passed on
    assert isinstance(err.value, UserError)
    assert not marker.exists()

    # The plant is real: DeepSpeed's own engine (weights_only=False) runs it.
    TorchCheckpointEngine().load(str(planted))
    assert marker.read_text() == "pwned"

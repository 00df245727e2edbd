"""engine: ddp (trainers/ddp.py): the spec rules that choose it, and DDPEngine against DeepSpeed's own
engine in this process (one gloo rank, no Ray): the same learning rate at every step for each decay,
the same weights after accumulated steps, one all-reduce per optimizer step, exact checkpoint resume
read with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import make_model
from trainers.config import TrainSection, with_values
from trainers.ddp import STATE_FILE, DDPEngine
from trainers.deepspeed import render_config, resolve_precision
from trainers.safe_load import UnsafeCheckpointError

LABELS = ["neg", "pos"]
TAG = "ds"


def _train(**sections) -> TrainSection:
    doc = {"model": {"name_or_path": "m", "task": "sequence-classification", "labels": LABELS},
           "data": {"train": "d.csv"}, "scaling": {"num_workers": 1}}
    doc.update(sections)
    return TrainSection.model_validate(doc)


# --- the spec ------------------------------------------------------------------------------------


def test_engine_defaults_to_deepspeed_and_nothing_changes():
    t = _train()
    assert t.engine == "deepspeed" and t.deepspeed.zero_stage == 2


def test_ddp_normalises_a_stage_left_out_to_zero():
    t = _train(engine="ddp")
    assert t.deepspeed.zero_stage == 0  # memory plan and ZeRO-3 paths see a full replica
    assert _train(engine="ddp", deepspeed={"zero_stage": 0}).deepspeed.zero_stage == 0
    # The resolved spec crosses the Ray boundary as JSON and comes back the same.
    assert TrainSection.model_validate_json(t.model_dump_json()) == t


@pytest.mark.parametrize("ds, named", [
    ({"zero_stage": 2}, "deepspeed.zero_stage=2"),
    ({"zero_stage": 3}, "deepspeed.zero_stage=3"),
    ({"offload_optimizer": True}, "deepspeed.offload_optimizer=true"),
    ({"zero_stage": 3, "offload_params": True}, "deepspeed.offload_params=true"),
])
def test_ddp_refuses_sharding_and_offload_naming_both_fields(ds, named):
    with pytest.raises(ValueError) as err:
        _train(engine="ddp", deepspeed=ds)
    text = str(err.value)
    assert "engine=ddp" in text and named in text and "needs engine: deepspeed" in text, text


def test_ddp_refuses_fp16():
    with pytest.raises(ValueError, match="fp16 .*needs engine: deepspeed"):
        _train(engine="ddp", deepspeed={"precision": "fp16"})


def test_a_change_of_engine_takes_a_default_stage_along():
    """A search over engine (tuning applies values with with_values, after a JSON round trip)."""
    ds_default = TrainSection.model_validate_json(_train().model_dump_json())  # zero_stage: 2 now written out
    ddp = with_values(ds_default, {"engine": "ddp"})
    assert (ddp.engine, ddp.deepspeed.zero_stage) == ("ddp", 0)
    back = with_values(ddp, {"engine": "deepspeed"})
    assert (back.engine, back.deepspeed.zero_stage) == ("deepspeed", 2)
    # A stage the user chose is not a default: switching to ddp still refuses it.
    with pytest.raises(ValueError, match="deepspeed.zero_stage=3"):
        with_values(_train(deepspeed={"zero_stage": 3}), {"engine": "ddp"})


def test_ddp_precision():
    ddp = {"engine": "ddp"}
    assert resolve_precision("auto", on_gpu=False, bf16_supported=False, **ddp) == "fp32"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=True, **ddp) == "bf16"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=False, **ddp) == "fp32"  # no loss scaler
    assert resolve_precision("auto", on_gpu=True, bf16_supported=False) == "fp16"  # deepspeed unchanged


# --- DDPEngine against DeepSpeed's engine -----------------------------------------------------------


@pytest.fixture(scope="module")
def one_rank():
    """torch.distributed with one gloo rank (for DeepSpeed and DDP); torn down so nothing leaks."""
    import deepspeed.comm.comm as ds_comm
    import deepspeed.utils.groups as ds_groups
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    ds_groups._WORLD_GROUP = None  # a clone of an earlier module's group, destroyed since (test_safe_load.py)
    with pytest.MonkeyPatch.context() as mp:  # DeepSpeed reads its rank from the environment
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": "1"}.items():  # never dialled: the process group above exists
            mp.setenv(k, v)
        yield
    dist.destroy_process_group()
    ds_comm.cdb = None
    ds_groups._WORLD_GROUP = None  # DeepSpeed's clone of the group destroyed above


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("ddp") / "bert", "sequence-classification", "bert", LABELS)


def _model(model_path: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(model_path)


def _spec(model_path: str, decay: str = "linear", accumulation: int = 2) -> TrainSection:
    return TrainSection.model_validate({
        "model": {"name_or_path": model_path, "task": "sequence-classification", "labels": LABELS},
        "data": {"train": "unused.csv"}, "optim": {"lr": 1e-2, "weight_decay": 0.01, "grad_clip": 0.5},
        "schedule": {"decay": decay, "warmup_ratio": 0.3, "gradient_accumulation_steps": accumulation},
        "deepspeed": {"zero_stage": 0}, "scaling": {"num_workers": 1}})


def _deepspeed(model_path: str, train: TrainSection, total_steps: int):
    import deepspeed

    model = _model(model_path)
    config = render_config(train, world_size=1, total_steps=total_steps, precision="fp32", on_gpu=False)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=config)
    return engine


def _ddp(model_path: str, train: TrainSection, total_steps: int, distributed: bool = True) -> DDPEngine:
    ddp_train = with_values(train, {"engine": "ddp"})
    return DDPEngine(_model(model_path), ddp_train, total_steps=total_steps, device=torch.device("cpu"),
                     distributed=distributed)


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(5, 40, (4, 8), generator=g)),
             "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(n)]


def _micro_step(engine, batch) -> None:
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_schedule_and_steps_match_deepspeed(one_rank, model_path, decay):
    """Learning rate after every micro-batch, optimizer-step count, and the weights after 8 accumulated
    steps (clipping, weight decay, warmup and decay included), the same from both engines."""
    train, total, accumulation = _spec(model_path, decay), 8, 2
    ds, ddp = _deepspeed(model_path, train, total), _ddp(model_path, train, total)
    assert ddp.get_lr() == ds.get_lr()  # before the first step (warmup starts at 0)
    batches = _batches(total * accumulation + 2)  # past the end: the schedule stays where DeepSpeed's does
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)  # the same dropout masks in both
        _micro_step(ds, batch)
        torch.manual_seed(100 + i)
        _micro_step(ddp, batch)
        assert ddp.global_steps == ds.global_steps == (i + 1) // accumulation, i
        assert ddp.get_lr() == pytest.approx(ds.get_lr(), rel=1e-12, abs=0), (i, decay)
    assert len({round(lr, 12) for lr in _lrs(train, total)}) > 2  # the schedule moved, so the match means something
    # Each AdamW step moves a weight by about lr = 1e-2; a step at another lr would differ by 1e-3 or more.
    # What remains is rounding (DeepSpeed clips with an fp64 norm), amplified where Adam divides by tiny moments.
    for (name, a), b in zip(ddp.module.named_parameters(), ds.module.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), (name, (a - b).abs().max())


def _lrs(train: TrainSection, total: int) -> list[float]:
    e = DDPEngine(torch.nn.Linear(2, 2), with_values(train, {"engine": "ddp"}), total_steps=total,
                  device=torch.device("cpu"), distributed=False)
    out = []
    for _ in range(total):
        e.lr_scheduler.step()
        out.append(e.get_lr()[0])
    return out


def test_gradients_all_reduce_once_per_optimizer_step(one_rank, model_path):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    accumulation = 3
    engine = _ddp(model_path, _spec(model_path, accumulation=accumulation), total_steps=4)
    synced_at: list[int] = []

    def counting_allreduce(state, bucket):
        synced_at.append(engine.micro_steps)  # the micro-batch whose backward is running
        return allreduce_hook(state, bucket)

    engine.ddp.register_comm_hook(None, counting_allreduce)
    engine.train()
    for batch in _batches(4 * accumulation):
        _micro_step(engine, batch)
    assert engine.global_steps == 4 and engine.micro_steps == 12
    assert sorted(set(synced_at)) == [2, 5, 8, 11], synced_at  # the last micro-batch of each window only
    # Evaluation bypasses DDP: no collective, so ranks with unequal validation shards cannot hang.
    n = len(synced_at)
    with torch.no_grad():
        engine.eval()(**_batches(1)[0])
    assert len(synced_at) == n


def test_checkpoint_resumes_exactly_and_reads_weights_only(one_rank, model_path, tmp_path):
    train, total = _spec(model_path), 6
    batches = _batches(2 * total)
    straight = _ddp(model_path, train, total)
    for i, b in enumerate(batches[:4]):
        torch.manual_seed(i)
        _micro_step(straight, b)
    straight.save_checkpoint(tmp_path / "state", tag=TAG)
    saved = torch.load(tmp_path / "state" / TAG / STATE_FILE, weights_only=True)
    assert saved["global_steps"] == 2 and set(saved["lr_scheduler"]) == {"last_batch_iteration"}

    calls: list = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    resumed = _ddp(model_path, train, total)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        resumed.load_checkpoint(tmp_path / "state", tag=TAG)
    assert calls == [True]
    assert (resumed.global_steps, resumed.get_lr()) == (straight.global_steps, straight.get_lr())
    for i, b in enumerate(batches[4:], start=4):
        for engine in (straight, resumed):
            torch.manual_seed(i)
            _micro_step(engine, b)
    assert resumed.global_steps == straight.global_steps == total
    for (name, a), b in zip(resumed.module.named_parameters(), straight.module.parameters(), strict=True):
        assert torch.equal(a, b), name


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_planted_pickle_in_ddp_state_is_refused(model_path, tmp_path):
    engine = _ddp(model_path, _spec(model_path), total_steps=2, distributed=False)
    (tmp_path / TAG).mkdir()
    marker = tmp_path / "marker"
    torch.save({"module": _Planted(marker)}, tmp_path / TAG / STATE_FILE)
    with pytest.raises(UnsafeCheckpointError, match="would execute"):
        engine.load_checkpoint(tmp_path, tag=TAG)
    assert not marker.exists()


def test_a_checkpoint_of_the_other_engine_is_named(model_path, tmp_path):
    from trainers.errors import CheckpointError

    (tmp_path / TAG).mkdir()
    (tmp_path / TAG / "mp_rank_00_model_states.pt").write_bytes(b"")
    engine = _ddp(model_path, _spec(model_path), total_steps=2, distributed=False)
    with pytest.raises(CheckpointError, match="not written by engine ddp"):
        engine.load_checkpoint(tmp_path, tag=TAG)


def test_rerunning_a_run_with_the_other_engine_fails_on_the_driver(tmp_path):
    """fit() refuses before any worker starts: each worker would fail (and be retried) the same way."""
    from trainers.errors import UserError
    from trainers.launch import _refuse_other_engine
    from trainers.loop import TrainerState
    from trainers.storage import Location

    run = tmp_path / "run"
    for step, engine in ((5, "ddp"), (10, "deepspeed")):  # the latest checkpoint is the one a rerun resumes
        (run / f"checkpoint_{step:06d}" / "state").mkdir(parents=True)
        (run / f"checkpoint_{step:06d}" / "state" / "trainer_state.json").write_text(
            TrainerState(step=step, engine=engine).model_dump_json())
    with pytest.raises(UserError, match="trained with engine deepspeed.*train.engine: deepspeed"):
        _refuse_other_engine(Location.parse(str(run)), "ddp")
    _refuse_other_engine(Location.parse(str(run)), "deepspeed")
    _refuse_other_engine(Location.parse(str(tmp_path / "new")), "ddp")  # nothing to resume


def test_the_spec_choosing_ddp_gets_the_plain_loop_and_never_deepspeed(model_path, one_rank, monkeypatch):
    """The fix for the biggest per-step cost on CPU (DeepSpeed's engine, bench/train_throughput.py):
    train.engine: ddp must reach DDPEngine through the loop's one seam, without deepspeed.initialize."""
    import deepspeed

    from trainers.loop import build_engine

    def refuse(**_):
        raise AssertionError("engine ddp called deepspeed.initialize")

    monkeypatch.setattr(deepspeed, "initialize", refuse)
    train = with_values(_spec(model_path), {"engine": "ddp"})
    engine = build_engine(train, _model(model_path), world=1, device=torch.device("cpu"), total_steps=4)
    assert isinstance(engine, DDPEngine) and engine.ddp is None  # one worker: no DDP wrapper, no collective
    assert type(engine.optimizer) is torch.optim.AdamW
    with pytest.raises(AssertionError, match="called deepspeed.initialize"):  # the other engine does go there
        build_engine(_spec(model_path), _model(model_path), world=1, device=torch.device("cpu"), total_steps=4)

"""trainers.fit on a real local Ray cluster: 2 workers, real DeepSpeed (gloo), tiny models built in code.

Each task x {full, LoRA} run learns its synthetic task and leaves a checkpoint that plain
transformers (peft for adapters) loads with the same outputs as the live model; together the runs
cover ZeRO stages 0, 2 and 3 and engine ddp (torch DDP, no DeepSpeed).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import torch
from ray.train import UserCallback

from tests.tiny import (
    VOCAB,
    lm_rows,
    make_model,
    ner_rows,
    pretrain_copy_lm,
    sentiment_rows,
    write_csv,
    write_jsonl,
)
from trainers.checkpoint import MODEL_DIR, load_for_inference, read_manifest, read_probe
from trainers.config import TrainSection, with_values
from trainers.rounds import RoundReport
from trainers.tasks import get_task

pytestmark = pytest.mark.integration

TASKS = {
    "sequence-classification": ("bert", sentiment_rows, write_csv, "cls.csv"),
    "token-classification": ("bert", ner_rows, write_jsonl, "ner.jsonl"),
    "causal-lm": ("gpt2", lm_rows, write_jsonl, "lm.jsonl"),
}


def _spec(tmp: Path, task: str, *, lora: bool = False, zero: int | None = 2, steps: int = 60, lr: float = 3e-3,
          engine: str = "deepspeed", **extra) -> TrainSection:
    arch, rows, write, name = TASKS[task]
    model = make_model(tmp / f"model-{task}", task, arch)
    data = write(tmp / name, rows(480))
    doc = {
        "engine": engine,
        "model": {"name_or_path": model, "task": task},
        "lora": {"enabled": lora, "r": 8},
        "data": {"train": data, "validation_fraction": 0.2, "max_length": 24},
        "optim": {"lr": lr},
        "schedule": {"epochs": 100, "max_steps": steps, "micro_batch_size": 16, "eval_every_steps": 20,
                     "log_every_steps": 20},
        "deepspeed": {} if zero is None else {"zero_stage": zero},
        "scaling": {"num_workers": 2, "max_failures": 0},
    }
    for path, value in extra.items():
        section, key = path.split("__")
        doc[section][key] = value
    return TrainSection.model_validate(doc)


def _fit(spec: TrainSection, tmp: Path, name: str = "run"):
    from trainers.launch import fit

    return fit(spec, storage_path=str(tmp / "results"), name=name)


def read_adapter_base(ckpt: str) -> str:
    import json

    return json.loads((Path(ckpt) / MODEL_DIR / "adapter_config.json").read_text())["base_model_name_or_path"]


def _reload_matches_probe(ckpt: str, task: str) -> None:
    """Plain transformers (peft for adapters) gives the outputs the live model gave at save time."""
    import transformers

    manifest = read_manifest(ckpt)
    probe = read_probe(ckpt)
    auto = {"sequence-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
            "causal-lm": transformers.AutoModelForCausalLM}[task]
    if manifest.kind == "adapter":
        from peft import PeftModel

        # The adapter names its base; the head's size comes from the labels the manifest lists.
        kwargs = ({"num_labels": len(manifest.labels), "ignore_mismatched_sizes": True}
                  if manifest.labels and task != "causal-lm" else {})
        base = auto.from_pretrained(read_adapter_base(ckpt), **kwargs)
        model = PeftModel.from_pretrained(base, str(Path(ckpt) / MODEL_DIR)).eval()
    else:
        model = auto.from_pretrained(str(Path(ckpt) / MODEL_DIR)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(probe.input_ids),
                       attention_mask=torch.tensor(probe.attention_mask)).logits.float()
    if task == "causal-lm":
        logits = logits[:, :, :64]
    expected = torch.tensor(probe.logits)
    # token-level outputs: compare real tokens only (padding positions are free to differ)
    mask = torch.tensor(probe.attention_mask).bool() if expected.dim() == 3 else torch.ones(len(expected), dtype=torch.bool)
    assert torch.allclose(logits[mask], expected[mask], atol=1e-4, rtol=1e-4), (logits[mask] - expected[mask]).abs().max()
    # The one reader the server uses agrees too (adapters merged into their base).
    loaded = load_for_inference(ckpt)
    merged, spec = loaded.model, loaded.train
    with torch.no_grad():
        again = merged(input_ids=torch.tensor(probe.input_ids),
                       attention_mask=torch.tensor(probe.attention_mask)).logits.float()
    if task == "causal-lm":
        again = again[:, :, :64]
    assert torch.allclose(again[mask], expected[mask], atol=1e-4, rtol=1e-4)
    assert spec.model.task == task


@pytest.mark.parametrize(
    "task, lora, zero, lr, steps",
    [
        ("sequence-classification", False, 0, 3e-3, 60),
        ("sequence-classification", True, 3, 2e-2, 120),
        ("token-classification", False, 2, 3e-3, 60),
        ("token-classification", True, 0, 2e-2, 120),
        ("causal-lm", False, 3, 3e-3, 60),
        ("causal-lm", True, 2, 2e-2, 120),
        # engine ddp: a frozen base with a trained head beside the adapters, and GPT-2's tied embeddings
        ("token-classification", True, "ddp", 2e-2, 120),
        ("causal-lm", False, "ddp", 3e-3, 60),
    ],
    ids=["cls-full-z0", "cls-lora-z3", "ner-full-z2", "ner-lora-z0", "lm-full-z3", "lm-lora-z2", "ner-lora-ddp",
         "lm-full-ddp"],
)
def test_task_learns_and_checkpoint_reloads(ray_cluster, tmp_path, task, lora, zero, lr, steps):
    engine = "ddp" if zero == "ddp" else "deepspeed"
    spec = _spec(tmp_path, task, lora=lora, zero=None if engine == "ddp" else zero, lr=lr, steps=steps, engine=engine)
    assert spec.deepspeed.zero_stage == (0 if engine == "ddp" else zero)
    if lora and task == "causal-lm":  # LoRA adapts a base that can already copy other words
        pretrain_copy_lm(Path(spec.model.name_or_path))
    result = _fit(spec, tmp_path)
    r = result.final
    m = r.eval
    assert r.step == r.total_steps == steps
    if task == "sequence-classification":
        assert m["eval_accuracy"] > 0.9, m
        assert m["eval_macro_f1"] > 0.9, m
    elif task == "token-classification":
        assert m["eval_f1"] > 0.8, m
    else:
        assert m["eval_loss"] < 0.75 * math.log(len(VOCAB)), m  # from ~ln(V) at random init
        assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-6)
    assert set(m) == set(get_task(task).reported_metrics()) - {"train_loss"}  # the task's names, as data
    assert r.samples_per_s > 0 and r.tokens_per_s > 0 and r.peak_memory_mb > 0
    trainable, total = r.trainable_params, r.total_params
    assert (trainable < total) if lora else (trainable == total)

    ckpt = result.latest_checkpoint
    manifest = read_manifest(ckpt)
    assert manifest.kind == ("adapter" if lora else "full")
    assert manifest.step == steps
    assert list(Path(ckpt, MODEL_DIR).glob("*.safetensors")), "weights must be safetensors"
    assert not list(Path(ckpt, MODEL_DIR).glob("*.bin"))
    _reload_matches_probe(ckpt, task)
    assert Path(result.run_dir, "tensorboard").is_dir()
    assert result.best_checkpoint is not None


def test_merge_on_save_writes_full_weights(ray_cluster, tmp_path):
    spec = _spec(tmp_path, "sequence-classification", lora=True, zero=2, lr=1e-2, steps=20,
                 lora__merge_on_save=True)
    result = _fit(spec, tmp_path)
    ckpt = result.latest_checkpoint
    assert read_manifest(ckpt).kind == "merged"
    assert not Path(ckpt, MODEL_DIR, "adapter_config.json").exists()
    _reload_matches_probe(ckpt, "sequence-classification")


def test_rerun_with_same_name_resumes(ray_cluster, tmp_path):
    spec = _spec(tmp_path, "sequence-classification", steps=40)
    first = _fit(with_values(spec, {"schedule.max_steps": 20}), tmp_path, name="resumable")
    assert first.final.step == 20
    second = _fit(spec, tmp_path, name="resumable")
    assert second.final.resumed_from_step == 20
    assert second.final.step == 40
    # The data was prepared once (trainers/prepared.py): the rerun tokenized nothing.
    prepared = list((tmp_path / "results" / "prepared").glob("*/builds/*.json"))
    assert len(prepared) == 1, prepared
    # Each round reports the run's fixed cost by stage.
    assert second.final.setup_model_s > 0 and second.final.setup_deepspeed_s > 0 and second.final.setup_worker_s > 0


class RecordEveryRank(UserCallback):
    """On Ray Train's controller: every rank's metrics of every round, one JSON line per round."""

    def __init__(self, path: Path):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")


# Per-rank by nature: this rank's memory, its clock (throughput), its setup stages.
PER_RANK = {"peak_memory_mb", "samples_per_s", "tokens_per_s"} | {f for f in RoundReport.model_fields if f.startswith("setup_")}


def _servable_weights(ckpt: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(ckpt, MODEL_DIR).glob("*.safetensors"))
    assert files
    return {k: v for f in files for k, v in load_file(f).items()}


def test_ddp_resume_is_exact_and_every_rank_reports_the_same_metrics(ray_cluster, tmp_path):
    """engine ddp, 2 workers, gradient accumulation: 20 steps then a rerun to 40 ends exactly where 40
    steps in one go do (weights, metrics), across epoch ends and a mid-epoch restart; every rank
    reports the same numbers in every round."""
    # decay constant: the schedule does not depend on max_steps, which the interrupted run changes.
    # 384 train rows / 2 workers / micro 16 / accumulation 2 = 6 steps per epoch: step 20 is mid-epoch.
    spec = _spec(tmp_path, "sequence-classification", engine="ddp", zero=None, steps=40, schedule__decay="constant",
                 schedule__gradient_accumulation_steps=2, schedule__eval_every_steps=10)
    ranks = tmp_path / "ranks.jsonl"
    from trainers.launch import fit

    straight = fit(spec, storage_path=str(tmp_path / "results"), name="straight", callbacks=[RecordEveryRank(ranks)])
    first = _fit(with_values(spec, {"schedule.max_steps": 20}), tmp_path, name="resumed")
    second = _fit(spec, tmp_path, name="resumed")

    assert first.final.step == 20 and second.final.resumed_from_step == 20
    a, b = straight.final, second.final
    assert a.step == b.step == 40
    assert a.eval["eval_accuracy"] > 0.9, a.eval  # it learned
    assert (a.eval, a.train_loss, a.lr) == (b.eval, b.train_loss, b.lr)
    wa, wb = _servable_weights(straight.latest_checkpoint), _servable_weights(second.latest_checkpoint)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]

    rounds = [json.loads(line) for line in ranks.read_text().splitlines()]
    assert [RoundReport.from_ray(r[0]).step for r in rounds] == [10, 20, 30, 40]
    for per_rank in rounds:
        assert len(per_rank) == 2
        same = [RoundReport.from_ray(m).model_dump(exclude=PER_RANK) for m in per_rank]
        assert same[0] == same[1], same


def test_worker_killed_mid_run_resumes_from_latest_checkpoint(ray_cluster, tmp_path):
    import psutil

    spec = _spec(tmp_path, "sequence-classification", steps=400, scaling__max_failures=2,
                 schedule__eval_every_steps=50)
    run_dir = tmp_path / "results" / "killed"
    killed: dict = {}

    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints

    def latest_registered() -> int:
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # not written yet, or caught mid-write
            return 0
        return int(latest.get("checkpoint_dir_name", "checkpoint_0").split("_")[1])

    def kill_after_a_registered_checkpoint():
        # Kill as soon as the controller has registered a checkpoint: one only written to disk is
        # not yet resumable. Only this run's workers (started after the test) are candidates.
        started, deadline = time.time(), time.time() + 300
        while time.time() < deadline and latest_registered() == 0:
            time.sleep(0.02)
        killed["registered"] = latest_registered()
        workers = [p for p in psutil.process_iter(["cmdline", "create_time"])
                   if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and p.info["create_time"] >= started]
        if workers:
            workers[-1].kill()
            killed["pid"] = workers[-1].pid

    killer = threading.Thread(target=kill_after_a_registered_checkpoint, daemon=True)
    killer.start()
    result = _fit(spec, tmp_path, name="killed")
    killer.join(timeout=5)
    assert killed.get("pid"), "no training worker was found to kill"
    assert result.final.step == 400
    # It continued from a checkpoint (not from scratch), at least the one registered at the kill.
    resumed = result.final.resumed_from_step
    assert resumed % 50 == 0 and resumed >= killed["registered"] > 0, (resumed, killed)


def test_nan_loss_stops_with_a_clear_error_and_no_retry(ray_cluster, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trainers.launch import TrainingDivergedError

    spec = _spec(tmp_path, "sequence-classification", steps=60, scaling__max_failures=3)
    # A corrupted weight (NaN) makes the very first loss NaN, as a real blow-up would.
    model = AutoModelForSequenceClassification.from_pretrained(spec.model.name_or_path)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(spec.model.name_or_path, safe_serialization=True)
    with pytest.raises(TrainingDivergedError, match="Lower train.optim.lr") as info:
        _fit(spec, tmp_path, name="nan")
    assert "at step 1" in str(info.value)
    # Not retried: the only checkpoint is the divergence marker, and a rerun refuses to resume it.
    assert [p.name for p in (tmp_path / "results" / "nan").glob("checkpoint_0*")] == ["checkpoint_000001_diverged"]
    with pytest.raises(TrainingDivergedError, match="diverged earlier"):
        _fit(spec, tmp_path, name="nan")

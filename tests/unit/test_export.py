"""Portable checkpoints and `zerotune export`: every kind opens with the libraries' own loaders and
reproduces probe.json; exports are checked before they count, and refused ones leave nothing behind.

Checkpoints are tiny models written through the real contract (`write_servable`) with a real probe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import make_model
from tests.unit.test_serving_checkpoints import NER_LABELS, _train_section

LABELS3 = ["negative", "neutral", "positive"]
TEXTS = ["the movie was good", "alice visited paris in london", "bad"]


def _probe(model, tok, task: str):
    import torch

    from trainers.checkpoint import Probe
    from trainers.tasks import get_task

    enc = tok(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return Probe(input_ids=enc["input_ids"].tolist(), attention_mask=enc["attention_mask"].tolist(),
                 logits=get_task(task).probe_logits(logits).tolist())


def _checkpoint(root: Path, task: str, labels: list[str] | None, *, adapter: bool = False, arch: str = "bert") -> Path:
    import torch

    from trainers.checkpoint import write_servable
    from trainers.model import count_parameters, load_base_model, load_tokenizer
    from trainers.tasks import get_task

    # the base's own head has 2 outputs (or none for the LM); a 3-label model replaces it
    base = make_model(root / "base", task, arch)
    tok = load_tokenizer(base)
    model = load_base_model(base, get_task(task), labels)
    torch.manual_seed(1)
    if adapter:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=getattr(TaskType, get_task(task).peft_task_type), r=4,
                                                 target_modules=["query", "value"], init_lora_weights=False))
    with torch.no_grad():  # a head that is not all zeros: outputs differ row to row
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2 and p.shape[0] == len(labels or [0, 0]):
                p.normal_(0, 1.0)
    path = root / "checkpoint"
    write_servable(path, model=model, tokenizer=tok, train=_train_section(base, task, lora=adapter), labels=labels,
                   step=1, epoch=1.0, metrics={"eval_loss": 1.0}, params=count_parameters(model),
                   probe=_probe(model, tok, task))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {
        "full": _checkpoint(root / "full", "sequence-classification", LABELS3),
        "adapter": _checkpoint(root / "adapter", "sequence-classification", LABELS3, adapter=True),
        "ner": _checkpoint(root / "ner", "token-classification", NER_LABELS),
        "lm": _checkpoint(root / "lm", "causal-lm", None, arch="gpt2"),
    }


def _drift(ckpt: Path, logits) -> float:
    from trainers.checkpoint import read_manifest, read_probe
    from trainers.export import probe_drift

    return probe_drift(read_manifest(ckpt).task, logits, read_probe(ckpt))[0]


def _run(model, ckpt: Path):
    import torch

    from trainers.checkpoint import read_probe

    probe = read_probe(ckpt)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(probe.input_ids), attention_mask=torch.tensor(probe.attention_mask)).logits


def test_full_checkpoints_open_with_transformers_and_name_their_labels(ckpts):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(ckpts["full"] / "model")
    assert model.config.id2label == dict(enumerate(LABELS3))
    assert model.config.label2id == {x: i for i, x in enumerate(LABELS3)}
    assert _drift(ckpts["full"], _run(model, ckpts["full"])) < 1e-4
    ner = AutoModelForTokenClassification.from_pretrained(ckpts["ner"] / "model")
    assert _drift(ckpts["ner"], _run(ner, ckpts["ner"])) < 1e-4
    answer = pipeline("text-classification", model=str(ckpts["full"] / "model"), device="cpu")(TEXTS[0])[0]
    assert answer["label"] in LABELS3  # names, not LABEL_0


def test_adapter_names_its_base_as_the_spec_did_and_carries_its_head(ckpts):
    from safetensors import safe_open

    from trainers.checkpoint import read_manifest, read_train

    config = json.loads((ckpts["adapter"] / "model" / "adapter_config.json").read_text())
    spec_base = read_train(ckpts["adapter"]).model.name_or_path
    assert config["base_model_name_or_path"] == spec_base == read_manifest(ckpts["adapter"]).base_model
    assert "classifier" in config["modules_to_save"]
    with safe_open(str(ckpts["adapter"] / "model" / "adapter_model.safetensors"), "pt") as f:
        head = {k: f.get_slice(k).get_shape() for k in f.keys() if "classifier" in k}
    assert head and all(shape[0] == len(LABELS3) for shape in head.values()), head


def test_peft_own_loader_rebuilds_the_adapter(ckpts):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import pipeline

    from trainers.checkpoint import read_manifest
    from trainers.export import hf_load_kwargs

    manifest = read_manifest(ckpts["adapter"])
    model = AutoPeftModelForSequenceClassification.from_pretrained(ckpts["adapter"] / "model",
                                                                   **hf_load_kwargs(manifest))
    assert _drift(ckpts["adapter"], _run(model, ckpts["adapter"])) < 1e-4
    merged = model.merge_and_unload()
    assert merged.config.id2label == dict(enumerate(LABELS3))
    classify = pipeline("text-classification", model=merged, tokenizer=str(ckpts["adapter"] / "model"), device="cpu")
    assert classify(TEXTS[0])[0]["label"] in LABELS3


def test_export_merges_and_writes_checked_onnx_and_int8(ckpts, tmp_path):
    import onnxruntime
    from transformers import AutoModelForSequenceClassification

    from cluster.cli import main
    from serving.config import ServeSection
    from serving.engine import Engine
    from trainers.checkpoint import read_manifest
    from trainers.export import read_export

    out = tmp_path / "winner"
    assert main(["export", str(ckpts["adapter"]), "--out", str(out), "--merge", "--int8"]) == 0
    done = read_export(out)
    assert (done.source_kind, done.kind, done.onnx, done.int8) == ("adapter", "merged", True, True)
    assert [c.artifact for c in done.checks] == ["model/", "onnx/model.onnx", "onnx/model.int8.onnx"]
    assert all(c.max_abs_diff <= c.tolerance for c in done.checks)
    assert read_manifest(out).kind == "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert _drift(ckpts["adapter"], _run(merged, ckpts["adapter"])) < 1e-3
    assert onnxruntime.InferenceSession(str(out / "onnx" / "model.onnx")).get_inputs()[0].name == "input_ids"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    # the export serves through the ONNX backend with the torch backend's answers
    onnx = Engine.load(out, ServeSection(backend="onnx")).classify(TEXTS)
    torch_ = Engine.load(ckpts["adapter"], ServeSection()).classify(TEXTS)
    assert [max(range(3), key=p.__getitem__) for p in onnx] == [max(range(3), key=p.__getitem__) for p in torch_]
    assert max(abs(a - b) for pa, pb in zip(onnx, torch_, strict=True) for a, b in zip(pa, pb, strict=True)) < 1e-4


def test_onnx_backend_exports_a_tagger_on_load(ckpts):
    from serving.config import ServeSection
    from serving.engine import Engine

    text = ["alice visited paris in london"]
    [onnx] = Engine.load(ckpts["ner"], ServeSection(backend="onnx")).tag(text)
    [torch_] = Engine.load(ckpts["ner"], ServeSection()).tag(text)
    assert onnx and [(e.type, e.start, e.end) for e in onnx] == [(e.type, e.start, e.end) for e in torch_]
    assert max(abs(a.score - b.score) for a, b in zip(onnx, torch_, strict=True)) < 1e-4


def test_export_of_an_adapter_copy_and_a_bf16_cast(ckpts, tmp_path):
    import torch

    from cluster.cli import main
    from trainers.checkpoint import load_for_inference
    from trainers.export import read_export

    assert main(["export", str(ckpts["adapter"]), "--out", str(tmp_path / "a")]) == 0
    assert read_export(tmp_path / "a").kind == "adapter"
    load_for_inference(tmp_path / "a")  # reproduces the probe, or raises
    assert main(["export", str(ckpts["full"]), "--out", str(tmp_path / "b"), "--dtype", "bf16"]) == 0
    [check] = read_export(tmp_path / "b").checks
    assert check.dtype == "bfloat16" and 0 < check.max_abs_diff <= check.tolerance
    assert load_for_inference(tmp_path / "b", dtype=torch.bfloat16).model.dtype == torch.bfloat16


@pytest.mark.parametrize("case", ["lm-onnx", "diverged", "no-manifest", "cuda", "drift", "not-empty", "adapter-cast"])
def test_refused_exports_exit_2_and_leave_nothing(ckpts, tmp_path, capsys, case):
    import shutil

    from cluster.cli import main

    src, out, extra = ckpts["full"], tmp_path / "out", []
    if case == "lm-onnx":
        src, extra = ckpts["lm"], ["--onnx"]
    elif case == "diverged":
        src = tmp_path / "diverged"
        shutil.copytree(ckpts["full"], src)
        (src / "diverged.json").write_text('{"step": 3, "train_loss": "nan", "lr": 0.1}')
    elif case == "no-manifest":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "cuda":
        extra = ["--device", "cuda", "--dtype", "fp16"]
    elif case == "drift":
        extra = ["--dtype", "bf16", "--tolerance", "1e-9"]
    elif case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "adapter-cast":
        src, extra = ckpts["adapter"], ["--dtype", "fp16"]
    assert main(["export", str(src), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    expected = {"lm-onnx": "causal-lm", "diverged": "diverged", "no-manifest": "not a zerotune checkpoint",
                "cuda": "CUDA", "drift": "tolerance", "not-empty": "not empty", "adapter-cast": "--merge"}[case]
    assert expected in err, err
    if case == "drift":
        assert "largest logit difference" in err
    if case == "not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

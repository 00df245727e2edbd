"""Many LoRA adapters on one base, without Ray: which adapters may share a replica (refused at
load time with the reason), how a request's `model` names one, and an Engine that holds one base
and answers each adapter's way (classification heads and causal-LM adapters), unloading and
reloading as the LRU asks."""

from __future__ import annotations

import pytest

from serving.adapters import ModelIds, UnknownModel, check_adapters
from serving.config import AdapterSpec, ServeSection
from serving.engine import Engine, GenerationItem
from tests.unit.test_serving_checkpoints import (
    CLS_LABELS,
    classifier_checkpoint,
    lm_adapter_checkpoint,
    lm_base,
)
from trainers.errors import CheckpointError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    neg = classifier_checkpoint(root / "neg", favour="neg", adapter=True)
    base = str(root / "neg" / "base")
    lm = lm_base(root / "lm-base")
    return {
        "neg": neg,
        "pos": classifier_checkpoint(root / "pos", favour="pos", adapter=True, base=base),
        "other-base": classifier_checkpoint(root / "other", favour="pos", adapter=True),
        "full": classifier_checkpoint(root / "full", favour="pos", base=base),
        "lm-good": lm_adapter_checkpoint(root / "lm-good", lm, word="good"),
        "lm-bad": lm_adapter_checkpoint(root / "lm-bad", lm, word="bad"),
    }


def _specs(checkpoints, *names):
    return [AdapterSpec(name=n, checkpoint=str(checkpoints[n])) for n in names]


def test_adapters_of_another_base_task_or_kind_are_refused_with_reasons(checkpoints):
    check_adapters(checkpoints["neg"], _specs(checkpoints, "pos"))
    with pytest.raises(CheckpointError) as info:
        check_adapters(checkpoints["neg"], _specs(checkpoints, "other-base", "full", "lm-good"))
    message = str(info.value)
    assert "adapter 'other-base' was trained on base" in message
    assert "adapter 'full'" in message and "is a full model, not a LoRA adapter" in message
    assert "adapter 'lm-good' is a causal-lm adapter; the app serves sequence-classification" in message
    with pytest.raises(CheckpointError, match="needs it to be a LoRA adapter checkpoint too"):
        check_adapters(checkpoints["full"], _specs(checkpoints, "pos"))


def test_adapter_names_are_checked_in_the_section():
    with pytest.raises(ValueError, match="repeated: a"):
        ServeSection(adapters=[{"name": "a", "checkpoint": "x"}, {"name": "a", "checkpoint": "y"}])
    with pytest.raises(ValueError, match="repeated: zerotune"):
        ServeSection(adapters=[{"name": "zerotune", "checkpoint": "x"}])
    with pytest.raises(ValueError, match="pattern"):
        ServeSection(adapters=[{"name": "a:b", "checkpoint": "x"}])
    with pytest.raises(ValueError, match="int8"):
        ServeSection(adapters=[{"name": "a", "checkpoint": "x"}], quantize="int8")


def test_model_ids_name_an_adapter_or_the_app():
    ids = ModelIds("app", "pkg://base/model", ("a", "b"))
    assert [ids.adapter_for(m) for m in (None, "", "app", "a", "app:b", "pkg://base/model:a", "app:app")] == [
        None, None, None, "a", "b", "a", None,
    ]
    with pytest.raises(UnknownModel, match="'app', 'a', 'b'"):
        ids.adapter_for("c")
    with pytest.raises(UnknownModel):
        ids.adapter_for("other:a")


def test_one_base_answers_each_adapters_way(checkpoints):
    engine = Engine.load(checkpoints["neg"], ServeSection(adapters=_specs(checkpoints, "pos")))
    text = ["the movie was fun"]

    def top(adapter):
        [probs] = engine.classify(text, adapter)
        return CLS_LABELS[max(range(len(probs)), key=probs.__getitem__)], max(probs)

    assert engine.loaded_adapters == []  # loaded on first use (Serve's multiplexed loader)
    assert top("pos")[0] == "pos" and top(None)[0] == "neg" and top("pos")[1] > 0.99
    assert engine.loaded_adapters == ["pos"]
    engine.unload_adapter("pos")  # what the LRU's eviction does
    assert engine.loaded_adapters == [] and top(None)[0] == "neg"
    assert top("pos")[0] == "pos"  # an evicted adapter asked for again comes back


def test_causal_lm_adapters_on_one_base_and_a_mixed_batch(checkpoints):
    engine = Engine.load(checkpoints["lm-good"], ServeSection(adapters=_specs(checkpoints, "lm-bad")))
    items = [GenerationItem("repeat : fun", False, 2, 0.0, 1.0, adapter=a) for a in (None, "lm-bad", None)]
    out = engine.generate(items)
    assert [o[0].text for o in out] == ["good good", "bad bad", "good good"]


def test_build_app_refuses_mismatched_adapters_before_any_replica_starts(checkpoints):
    from serving.app import build_app

    with pytest.raises(CheckpointError, match="'lm-good' is a causal-lm adapter"):
        build_app({"checkpoint": str(checkpoints["neg"]),
                   "serve": {"adapters": [{"name": "lm-good", "checkpoint": str(checkpoints["lm-good"])}]}})
    app = build_app({"checkpoint": str(checkpoints["neg"]),
                     "serve": {"adapters": [{"name": "pos", "checkpoint": str(checkpoints["pos"])}]}})
    _, serve_json = app._bound_deployment.init_args  # no public getter for what an Application was bound with
    assert ServeSection.model_validate(serve_json).adapters[0].checkpoint == str(checkpoints["pos"].resolve())


def test_adapters_in_cloud_storage_are_served_from_one_node_local_copy_each(checkpoints, s3, tmp_path, monkeypatch):
    """The app's adapter and the extra ones live in a bucket (moto): each is copied once into the
    node's cache (servable part only) and answers as it does from disk."""
    from trainers.storage import CACHE_ENV, Location

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    bucket = Location.parse(f"s3://unit/adapters?{s3}")
    uris = {name: str(bucket.join(name)) for name in ("neg", "pos")}
    for name, uri in uris.items():
        Location.parse(uri).upload(checkpoints[name])
    engine = Engine.load(uris["neg"], ServeSection(adapters=[AdapterSpec(name="pos", checkpoint=uris["pos"])]))
    [neg], [pos] = engine.classify(["the movie was fun"], None), engine.classify(["the movie was fun"], "pos")
    assert CLS_LABELS[neg.index(max(neg))] == "neg" and CLS_LABELS[pos.index(max(pos))] == "pos"
    copies = sorted((tmp_path / "cache").glob("*/.zerotune-complete"))
    assert sorted(p.read_text() for p in copies) == sorted(uris.values())
    assert not any((p.parent / "state").exists() for p in copies)

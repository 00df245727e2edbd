"""Data prepared once (trainers/prepared.py): tokenized on the driver, stored under a key, reused by
every later run with the same data, and read by each worker as a disjoint shard."""

from __future__ import annotations

import json
import os

import pytest

from tests.tiny import lm_rows, make_model, ner_rows, sentiment_rows, write_csv, write_jsonl
from trainers import prepared
from trainers.config import TrainSection, with_values
from trainers.errors import DataError
from trainers.prepared import (
    MANIFEST,
    load_prepared,
    prepare_data,
    read_rows,
    shard_range,
    train_shard,
    validation_shard,
)
from trainers.storage import Location
from trainers.tasks import IGNORE, get_task


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("prep") / "m", "sequence-classification")


def _spec(model: str, data: str, task: str = "sequence-classification", **data_kw) -> TrainSection:
    return TrainSection.model_validate({"model": {"name_or_path": model, "task": task},
                                        "data": {"train": data, "validation_fraction": 0.2, "max_length": 16,
                                                 **data_kw}})


def _builds(data) -> list[str]:
    return data.location.join("builds").list()


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 16])
def test_shards_are_disjoint_cover_the_split_and_match_dataset_shard(n, world):
    import datasets

    shards = [shard_range(n, rank, world) for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # disjoint and covering
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    if n < world:
        return  # Dataset.shard refuses empty shards; shard_range gives them (padded by train_shard)
    ds = datasets.Dataset.from_dict({"i": list(range(n))})
    for rank, s in enumerate(shards):  # the cut Dataset.shard(contiguous=True) makes
        assert list(s) == ds.shard(num_shards=world, index=rank, contiguous=True)["i"]


def test_second_run_reuses_the_prepared_data_and_a_changed_input_gets_a_new_key(model, tmp_path):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(60))
    spec, root = _spec(model, path), Location.parse(tmp_path / "prepared")
    resolved, first = prepare_data(spec, root)
    assert not first.reused and resolved.model.labels == ["neg", "pos"] == first.manifest.labels
    assert first.manifest.rows == {"train": 48, "validation": 12}
    again_spec, again = prepare_data(spec, root)
    assert again.reused and again.manifest == first.manifest and again_spec == resolved
    assert _builds(first) == [f"{first.manifest.build_id}.json"]  # tokenized once
    # What the tokens depend on changes the key: max length, labels, the file's content.
    _, longer = prepare_data(with_values(spec, {"data.max_length": 24}), root)
    _, labelled = prepare_data(with_values(spec, {"model.labels": ["pos", "neg"]}), root)
    write_csv(tmp_path / "d.csv", sentiment_rows(60, seed=1))
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    _, edited = prepare_data(spec, root)
    keys = {d.manifest.key for d in (first, longer, labelled, edited)}
    assert len(keys) == 4 and not (longer.reused or labelled.reused or edited.reused)
    assert sorted(root.list()) == sorted(keys)
    # The driver tokenized what the spec asked: ids truncated at max_length, labels as ids.
    rows = read_rows(first.location, "train", 0, 48)
    assert all(len(r["input_ids"]) <= 16 and r["labels"] in (0, 1) for r in rows)


def test_worker_shards_are_equal_length_disjoint_and_cover_the_split(model, tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "ROW_GROUP", 7)  # several row groups: shard reads cross their edges
    path = write_csv(tmp_path / "d.csv", sentiment_rows(125))
    _, data = prepare_data(_spec(model, path), tmp_path / "prepared")
    data = load_prepared(str(data.location))  # as a worker sees it
    n = data.manifest.rows["train"]
    assert n == 100
    everything = read_rows(data.location, "train", 0, n)
    assert len({r["row"] for r in everything}) == n
    for world in (1, 2, 3, 4):
        shards = [train_shard(data, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1  # every rank runs as many steps
        own = [s[: len(shard_range(n, rank, world))] for rank, s in enumerate(shards)]
        assert sorted(r["row"] for s in own for r in s) == sorted(r["row"] for r in everything)
        assert [r for s in own for r in s] == everything  # contiguous, in order
    task = get_task("sequence-classification")
    head = read_rows(data.location, "validation", 0, 4)
    vals = [validation_shard(data, rank, 3, task, head) for rank in range(3)]
    assert len({len(v) for v in vals}) == 1
    real = [r for v in vals for r in v if r["labels"] != IGNORE]
    assert sorted(r["row"] for r in real) == sorted(r["row"] for r in read_rows(data.location, "validation", 0, 25))


@pytest.mark.parametrize("task, rows, write, name", [
    ("token-classification", ner_rows, write_jsonl, "ner.jsonl"),
    ("causal-lm", lm_rows, write_jsonl, "lm.jsonl"),
])
def test_every_task_is_tokenized_by_its_own_encoder(tmp_path, task, rows, write, name):
    arch = "gpt2" if task == "causal-lm" else "bert"
    model = make_model(tmp_path / "m", task, arch)
    spec = _spec(model, write(tmp_path / name, rows(40)), task)
    resolved, data = prepare_data(spec, tmp_path / "prepared")
    from trainers.data import load_splits
    from trainers.model import load_tokenizer

    t = get_task(task)
    expected = t.encode(load_splits(resolved.data, t, resolved.model.labels).train, load_tokenizer(model),
                        resolved.data, resolved.model.labels)
    got = read_rows(data.location, "train", 0, data.manifest.rows["train"])
    assert [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in got] == expected


def test_bad_data_fails_on_the_driver_and_leaves_no_manifest(model, tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"tweet": "good", "label": "pos"}] * 20)
    with pytest.raises(DataError, match="no column 'text'.*These columns exist: tweet, label"):
        prepare_data(_spec(model, path), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()  # nothing half-written for a later run to reuse


def test_manifest_is_typed_json(model, tmp_path):
    _, data = prepare_data(_spec(model, write_csv(tmp_path / "d.csv", sentiment_rows(30))), tmp_path / "p")
    doc = json.loads(data.location.join(MANIFEST).read_text())
    assert doc["key"] == data.manifest.key and doc["rows"]["validation"] == 6 and doc["seconds"] >= 0

"""Data checks run on the driver before any worker starts: each bad input names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import make_model, ner_rows, sentiment_rows, write_csv, write_jsonl
from trainers.config import DataSection, TrainSection
from trainers.data import load_splits
from trainers.errors import DataError, ModelNotFoundError
from trainers.launch import StorageError, resolve_storage
from trainers.model import resolve_model_path
from trainers.prepared import prepare_data
from trainers.tasks import get_task

SEQ = get_task("sequence-classification")


def _data(path: str, **kw) -> DataSection:
    return DataSection(train=path, **kw)


def test_splits_are_seeded_disjoint_and_subsampled(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(200))
    a = load_splits(_data(path, validation_fraction=0.1, test_fraction=0.1, max_train_samples=50, seed=3),
                    SEQ)
    b = load_splits(_data(path, validation_fraction=0.1, test_fraction=0.1, max_train_samples=50, seed=3),
                    SEQ)
    assert [r["_row"] for r in a.train] == [r["_row"] for r in b.train]
    assert len(a.train) == 50 and len(a.validation) == 20 and len(a.test) == 20
    rows = [set(r["_row"] for r in s) for s in (a.train, a.validation, a.test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert a.labels == ["neg", "pos"]
    c = load_splits(_data(path, validation_fraction=0.1, test_fraction=0.1, seed=4), SEQ)
    assert {r["_row"] for r in c.test} != rows[2]


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(20))
    with pytest.raises(DataError, match=r"no column 'sentiment'.*These columns exist: text, label"):
        load_splits(_data(path, label_column="sentiment"), SEQ)


def test_label_outside_the_label_set_names_row_and_label(tmp_path):
    rows = sentiment_rows(20)
    rows[6]["label"] = "meh"
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"row 7: label 'meh' is not one of \['neg', 'pos'\]"):
        load_splits(_data(path, validation_fraction=0.2), SEQ, labels=["neg", "pos"])


def test_empty_file_and_empty_split(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="empty"):
        load_splits(_data(str(empty)), SEQ)
    two = write_csv(tmp_path / "two.csv", sentiment_rows(2))
    with pytest.raises(DataError, match="validation split is empty"):
        load_splits(_data(two, validation_fraction=0.1), SEQ)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_splits(_data(str(tmp_path / "nope.csv")), SEQ)


def test_ner_words_and_tags_must_line_up(tmp_path):
    rows = ner_rows(10)
    rows[3]["tags"] = rows[3]["tags"][:-1]
    path = write_jsonl(tmp_path / "n.jsonl", rows)
    with pytest.raises(DataError, match="row 4: 6 tokens but 5 tags"):
        load_splits(_data(path, validation_fraction=0.2), get_task("token-classification"))


def test_model_path_that_does_not_exist_says_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="looked for a Hugging Face model directory"):
        resolve_model_path(str(tmp_path / "no-model"))
    with pytest.raises(ModelNotFoundError, match="no installed Python package"):
        resolve_model_path("pkg://not_a_package_zz/model")


def test_prepare_resolves_labels_before_workers_start(tmp_path):
    model = make_model(tmp_path / "m", "sequence-classification")
    path = write_csv(tmp_path / "d.csv", sentiment_rows(40))
    spec = TrainSection.model_validate({"model": {"name_or_path": model, "task": "sequence-classification"},
                                        "data": {"train": path}})
    resolved, data = prepare_data(spec, tmp_path / "prepared")
    assert resolved.model.labels == ["neg", "pos"] == data.manifest.labels


def test_chat_messages_need_a_chat_template(tmp_path):
    model = make_model(tmp_path / "m", "causal-lm", "gpt2")
    import json

    (Path(model) / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((Path(model) / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (Path(model) / "tokenizer_config.json").write_text(json.dumps(config))
    rows = [{"messages": [{"role": "user", "content": "say good"}, {"role": "assistant", "content": "good"}]}] * 20
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    spec = TrainSection.model_validate({"model": {"name_or_path": model, "task": "causal-lm"},
                                        "data": {"train": path, "messages_column": "messages"}})
    with pytest.raises(DataError, match="no chat template"):
        prepare_data(spec, tmp_path / "prepared")


def test_unwritable_storage_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write to storage path"):
        resolve_storage(str(blocker / "sub"))
    assert resolve_storage(str(tmp_path / "ok")).local().is_dir()

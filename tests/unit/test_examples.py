"""Every shipped example validates and opens with a usage block."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.loader import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert any(p.name == "quickstart.yaml" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    load_spec(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_opens_with_usage(path):
    assert path.read_text().startswith("# Usage:")


def test_full_corpus_example_is_the_quickstart_split_unsubsampled():
    by_name = {p.name: load_spec(p).train.data for p in EXAMPLES}
    quick, full = by_name["quickstart.yaml"], by_name["tweets-full.yaml"]
    same = ("train", "text_column", "label_column", "validation_fraction", "test_fraction", "seed", "max_length")
    assert {f: getattr(full, f) for f in same} == {f: getattr(quick, f) for f in same}
    assert (full.max_train_samples, full.max_eval_samples) == (None, None)

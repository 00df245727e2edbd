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

"""The spec loader: valid files load, every kind of mistake is reported with its field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cluster.cli import main
from cluster.errors import ConfigError
from cluster.loader import apply_override, load_spec, validate_doc

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def _write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def _validate(capsys, path: Path, *overrides: str) -> tuple[int, str]:
    code = main(["validate", str(path), *overrides])
    err = capsys.readouterr().err
    return code, err


def _mappings(doc, prefix=()):
    """Every (path, mapping) in a document, the root included."""
    yield prefix, doc
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _mappings(v, (*prefix, k))


# search_space's own keys are search paths (checked in test_search_space_paths_...), not fields
MAPPING_PATHS = [p for p, _ in _mappings(BASE) if p[-1:] != ("search_space",)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(MAPPING_PATHS), key=st.from_regex(r"\A[a-z]{3,12}_x\Z"))
def test_unknown_key_at_any_level_names_its_path(tmp_path, capsys, where, key):
    doc = copy.deepcopy(BASE)
    node = doc
    for part in where:
        node = node[part]
    node[key] = 1
    code, err = _validate(capsys, _write(tmp_path, doc))
    assert code == 2
    assert ".".join((*where, key)) in err
    assert "unknown key" in err
    assert "Traceback" not in err


NUMERIC_PATHS = [
    ("train", "optim", "lr"),
    ("train", "schedule", "micro_batch_size"),
    ("train", "lora", "r"),
    ("train", "scaling", "num_workers"),
    ("train", "data", "max_length"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(NUMERIC_PATHS),
    bad=st.one_of(
        st.integers(max_value=0),
        st.floats(max_value=0, allow_nan=False),
        st.text(alphabet="abcxyz", min_size=1, max_size=5),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=1),
    ),
)
def test_wrong_type_or_non_positive_value_is_rejected(tmp_path, capsys, path, bad):
    doc = copy.deepcopy(BASE)
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = bad
    code, err = _validate(capsys, _write(tmp_path, doc))
    assert code == 2
    assert ".".join(path) in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text, expect",
    [
        ("", "empty"),
        ("- a\n- b\n", "mapping"),
        ("just a string", "mapping"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "safe_load"),
        ("name: x\ntrain: [1, 2\n", "not valid YAML"),
        ("name: x\n", "train: required"),
    ],
)
def test_malformed_files(tmp_path, capsys, text, expect):
    code, err = _validate(capsys, _write(tmp_path, text))
    assert code == 2
    assert expect in err
    assert "Traceback" not in err


def test_python_tag_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    code, _ = _validate(capsys, _write(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n"))
    assert code == 2
    assert not marker.exists()


def test_typo_gets_did_you_mean(tmp_path, capsys):
    doc = copy.deepcopy(BASE)
    doc["train"]["data"]["max_lenght"] = doc["train"]["data"].pop("max_length")
    code, err = _validate(capsys, _write(tmp_path, doc))
    assert code == 2
    assert "train.data.max_lenght" in err and "Did you mean 'max_length'?" in err


def test_every_problem_is_reported_at_once(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["train"]["optim"]["lr"] = 0
    doc["train"]["lora"]["r"] = 0
    doc["train"]["scaling"]["num_workers"] = -2
    with pytest.raises(ConfigError) as info:
        load_spec(_write(tmp_path, doc))
    paths = " ".join(info.value.problems)
    for p in ("train.optim.lr", "train.lora.r", "train.scaling.num_workers"):
        assert p in paths


def test_search_space_paths_and_values_are_checked_at_load(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["tune"]["search_space"] = {
        "optim.learnig_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
        "lora.r": {"type": "choice", "values": [0, 8]},
        "lora": {"type": "choice", "values": [1]},
    }
    with pytest.raises(ConfigError) as info:
        load_spec(_write(tmp_path, doc))
    text = str(info.value)
    assert "tune.search_space.optim.learnig_rate" in text and "Fields: lr" in text
    assert "value 0 is rejected by train.lora.r" in text
    assert "train.lora is a section" in text


def test_overrides_go_through_the_schema(tmp_path):
    p = _write(tmp_path, BASE)
    spec = load_spec(p, ["train.optim.lr=1e-4", "train.scaling.num_workers=2", "tune.search_space.lora.r.values=[2, 4]"])
    assert spec.train.optim.lr == pytest.approx(1e-4)
    assert spec.train.global_batch_size == 16 * 2
    assert spec.tune.search_space["lora.r"].values == [2, 4]
    with pytest.raises(ConfigError, match="train.optim.lr"):
        load_spec(p, ["train.optim.lr=-3"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_spec(p, ["nonsense"])


def test_derived_values():
    doc = copy.deepcopy(BASE)
    doc["train"]["schedule"]["gradient_accumulation_steps"] = 4
    doc["train"]["scaling"]["num_workers"] = 3
    spec = validate_doc(doc)
    assert spec.train.global_batch_size == 16 * 4 * 3
    assert spec.train.lora.resolved_alpha == 2 * spec.train.lora.r
    assert spec.train.resolved_metric == "eval_macro_f1" and spec.train.resolved_mode == "max"


def test_spec_is_frozen():
    spec = validate_doc(copy.deepcopy(BASE))
    with pytest.raises(ValidationError):
        spec.train.optim.lr = 1.0  # type: ignore[misc]


def test_cross_section_gpu_check():
    doc = copy.deepcopy(BASE)
    doc["train"]["scaling"].update(num_workers=4, use_gpu=True)
    doc["cluster"]["worker_types"] = {"gpu": {"gpus": 1, "max_workers": 2}}
    with pytest.raises(ConfigError, match="needs 4 GPUs"):
        validate_doc(doc)


def test_override_into_missing_section_creates_it():
    doc = {"name": "x"}
    apply_override(doc, "train.optim.lr=0.1", "<test>")
    assert doc == {"name": "x", "train": {"optim": {"lr": 0.1}}}


def test_secret_looking_env_vars_are_refused():
    doc = copy.deepcopy(BASE)
    doc["cluster"]["runtime_env"] = {"env_vars": {"WANDB_API_KEY": "abc"}}
    with pytest.raises(ConfigError, match="look like secrets"):
        validate_doc(doc)

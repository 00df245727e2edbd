"""Property-based fuzzing of the spec loader (hypothesis): generated valid specs load; mutated ones
(unknown keys, wrong types, out-of-range values, broken bytes, random text, deep nesting, alias
bombs) fail with a ConfigError and nothing else, each within a deadline, with a message that can
be printed and stays short."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import safe_yaml
from cluster.errors import ConfigError
from cluster.loader import load_spec
from cluster.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())



def fuzz(examples: int) -> settings:
    """Modest counts, so the file runs in well under a minute on 2 cores; the deadline is the bound
    on each example (a hostile file must fail in well under a second; 3 s leaves room for a busy CI)."""
    return settings(max_examples=examples, deadline=timedelta(seconds=3),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


def _load(path: Path, data: bytes) -> ExperimentSpec | ConfigError:
    """Load `data` as a spec file: the spec, or the ConfigError (anything else fails the test)."""
    path.write_bytes(data)
    try:
        return load_spec(path)
    except ConfigError as err:
        text = str(err)
        text.encode("utf-8")  # printable on a UTF-8 terminal (no lone surrogates)
        assert len(text) < 20_000, len(text)
        assert err.problems and all(p.strip() for p in err.problems)
        return err


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


# --- valid specs ------------------------------------------------------------------------------------

fractions = st.floats(0.0, 0.44)
unit = st.floats(0.0, 1.0, exclude_max=True)


@st.composite
def deepspeed(draw) -> dict:
    stage = draw(st.sampled_from([0, 1, 2, 3]))
    return {"zero_stage": stage, "offload_optimizer": stage > 0 and draw(st.booleans()),
            "offload_params": stage == 3 and draw(st.booleans())}


@st.composite
def search_space(draw, ds: dict) -> dict:
    space = {}
    if draw(st.booleans()):
        low, high = sorted(draw(st.lists(st.floats(1e-8, 10.0), min_size=2, max_size=2, unique=True)))
        space["optim.lr"] = {"type": "loguniform", "low": low, "high": high}
    if draw(st.booleans()):
        q = draw(st.integers(1, 4))
        a = draw(st.integers(1, 50))
        space["lora.r"] = {"type": "quniform", "low": q * a, "high": q * draw(st.integers(a + 1, 60)), "q": q}
    if draw(st.booleans()):
        low, high = sorted(draw(st.lists(unit, min_size=2, max_size=2, unique=True)))
        space["lora.dropout"] = {"type": "uniform", "low": low, "high": high}
    if draw(st.booleans()):
        space["schedule.epochs"] = {"type": "grid", "values": draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))}
    if draw(st.booleans()):
        stages = [3] if ds["offload_params"] else [1, 2, 3] if ds["offload_optimizer"] else [0, 1, 2, 3]
        values = draw(st.lists(st.sampled_from(stages), min_size=1, max_size=3))
        space["deepspeed.zero_stage"] = {"type": draw(st.sampled_from(["grid", "choice"])), "values": values}
    if draw(st.booleans()):
        space["data.validation_fraction"] = {"type": "choice", "values": draw(st.lists(fractions, min_size=1, max_size=3))}
    return space


segment = st.from_regex(r"\A[a-z0-9._~-]{1,8}\Z")


@st.composite
def valid_specs(draw) -> dict:
    doc = copy.deepcopy(BASE)
    train = doc["train"]
    train["optim"].update(lr=draw(st.floats(1e-8, 10.0)), betas=draw(st.tuples(unit, unit)))
    train["lora"].update(r=draw(st.integers(1, 1024)), dropout=draw(unit))
    train["data"].update(validation_fraction=draw(fractions), test_fraction=draw(fractions),
                         seed=draw(st.integers(0, 2**63 - 1)), max_length=draw(st.integers(8, 131072)))
    train["schedule"].update(epochs=draw(st.integers(1, 100)), warmup_ratio=draw(unit))
    train["deepspeed"] = ds = draw(deepspeed())
    doc["name"] = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z"))
    doc["tune"]["search_space"] = draw(search_space(ds))
    doc["serve"]["route_prefix"] = "/" + "/".join(draw(st.lists(segment, max_size=3)))
    auth = draw(st.sampled_from(["none", "env", "file"]))
    if auth == "env":
        doc["serve"]["auth_token_env"] = draw(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,15}\Z"))
    elif auth == "file":
        doc["serve"]["auth_token_file"] = "/run/secrets/" + draw(segment)
    return doc


@fuzz(50)
@given(doc=valid_specs())
def test_generated_valid_specs_load(spec_file, doc):
    spec = _load(spec_file, _dump(doc))
    assert isinstance(spec, ExperimentSpec), spec
    assert spec.train.optim.lr == doc["train"]["optim"]["lr"]
    assert set(spec.tune.search_space) == set(doc["tune"]["search_space"])


# --- mutated specs ---------------------------------------------------------------------------------


def _mappings(doc: dict, prefix: tuple = ()):
    yield prefix, doc
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _mappings(v, (*prefix, k))


def _leaves(doc: dict, prefix: tuple = ()):
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k)


def _at(doc: dict, path: tuple) -> dict:
    for part in path:
        doc = doc[part]
    return doc


@fuzz(40)
@given(doc=valid_specs(), data=st.data(), key=st.from_regex(r"\A[a-z]{2,10}_zz\Z"))
def test_an_unknown_key_anywhere_is_a_config_error(spec_file, doc, data, key):
    where, node = data.draw(st.sampled_from(list(_mappings(doc))))
    node[key] = 1
    err = _load(spec_file, _dump(doc))
    assert isinstance(err, ConfigError)
    assert key in str(err)


WRONG = st.sampled_from([{"zz": [1]}, [[{}]], {"a": {"b": None}}])


@fuzz(40)
@given(doc=valid_specs(), data=st.data(), wrong=WRONG)
def test_a_wrong_type_at_any_leaf_is_a_config_error(spec_file, doc, data, wrong):
    path = data.draw(st.sampled_from(list(_leaves(doc))))
    _at(doc, path[:-1])[path[-1]] = wrong
    err = _load(spec_file, _dump(doc))
    assert isinstance(err, ConfigError)


INF, NAN = float("inf"), float("nan")
OUT_OF_RANGE = [
    ("train.optim.lr", [0, -1e-5, 10.5, INF, NAN, "fast"]),
    ("train.optim.betas", [[1.0, 0.9], [0.9, 1.5], [-0.1, 0.9], [INF, 0.9], [0.9]]),
    ("train.lora.r", [0, -3, 1025, 2.5, "eight"]),
    ("train.lora.dropout", [1.0, -0.1, NAN]),
    ("train.data.seed", [-1, 2**63, 2**64, 1.5]),
    ("train.data.validation_fraction", [1.0, -0.01, INF]),
    ("train.data.max_length", [7, 131073]),
    ("train.schedule.epochs", [0, -1]),
    ("train.scaling.num_workers", [0]),
    ("train.deepspeed.zero_stage", [4, -1, "two"]),
    ("serve.port", [0, 65536]),
    ("serve.route_prefix", ["/api/", "api", "/a/{x}", "", "/a//b", "/a b"]),
    ("serve.auth_token_env", ["", " ", "sk-123", "1ABC"]),
    ("serve.auth_token_file", ["", "   "]),
    ("name", ["", "-x", "a" * 65, "a b"]),
    ("tune.num_samples", [0]),
    ("tune.scheduler.reduction_factor", [1.0, INF]),
]
OUT_OF_RANGE_CASES = [(path, bad) for path, values in OUT_OF_RANGE for bad in values]


@fuzz(60)
@given(doc=valid_specs(), case=st.sampled_from(OUT_OF_RANGE_CASES))
def test_an_out_of_range_value_is_a_config_error_naming_its_field(spec_file, doc, case):
    path, bad = case
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = bad
    doc["tune"]["search_space"] = {}  # a searched path would override the value
    err = _load(spec_file, _dump(doc))
    assert isinstance(err, ConfigError)
    assert path in str(err)


BAD_DOMAINS = [
    ("lora.r", {"type": "uniform", "low": 2, "high": 16}),
    ("lora.r", {"type": "loguniform", "low": 2, "high": 16}),
    ("lora.r", {"type": "quniform", "low": 2, "high": 16, "q": 0.5}),
    ("lora.r", {"type": "choice", "values": [8, 0]}),
    ("schedule.epochs", {"type": "uniform", "low": 1, "high": 3}),
    ("optim.lr", {"type": "loguniform", "low": 1e-5, "high": 11.0}),
    ("lora.dropout", {"type": "uniform", "low": 0.5, "high": 1.0}),
    ("deepspeed.precision", {"type": "uniform", "low": 0, "high": 1}),
    ("optim.betas", {"type": "uniform", "low": 0.5, "high": 0.9}),
    ("data.test_fraction", {"type": "grid", "values": [0.0, 0.95]}),
    ("optim.learning_rate", {"type": "grid", "values": [0.1]}),
]


@fuzz(30)
@given(doc=valid_specs(), case=st.sampled_from(BAD_DOMAINS))
def test_a_domain_its_field_cannot_take_is_a_config_error(spec_file, doc, case):
    path, domain = case
    doc["tune"]["search_space"][path] = domain
    err = _load(spec_file, _dump(doc))
    assert isinstance(err, ConfigError)
    assert f"tune.search_space.{path}" in str(err)


# --- hostile bytes and text ------------------------------------------------------------------------

edits = st.lists(st.tuples(st.sampled_from(["insert", "replace", "delete"]), st.floats(0, 1, exclude_max=True),
                           st.binary(min_size=1, max_size=4)), min_size=1, max_size=6)


@fuzz(60)
@given(doc=valid_specs(), ops=edits)
def test_corrupted_bytes_load_or_fail_with_a_config_error(spec_file, doc, ops):
    data = bytearray(_dump(doc))
    for op, where, chunk in ops:
        i = int(where * len(data))
        if op == "insert":
            data[i:i] = chunk
        elif op == "replace":
            data[i:i + len(chunk)] = chunk
        else:
            del data[i:i + len(chunk)]
    _load(spec_file, bytes(data))  # either outcome; never another exception, never slow


@fuzz(100)
@given(text=st.text(max_size=400))
def test_random_unicode_is_a_config_error(spec_file, text):
    assert isinstance(_load(spec_file, text.encode("utf-8")), ConfigError)


@fuzz(100)
@given(data=st.binary(max_size=400))
def test_random_bytes_are_a_config_error(spec_file, data):
    assert isinstance(_load(spec_file, data), ConfigError)


@fuzz(30)
@given(depth=st.integers(safe_yaml.MAX_DEPTH + 1, 20_000), style=st.sampled_from(["flow-list", "flow-map", "block"]),
       where=st.sampled_from(["train", "train.model.labels", "cluster.runtime_env"]))
def test_deep_nesting_anywhere_is_a_config_error(spec_file, depth, style, where):
    if style == "flow-list":
        value = "[" * depth + "]" * depth
    elif style == "flow-map":
        value = "{a: " * depth + "1" + "}" * depth
    else:
        depth = min(depth, 2000)  # block style needs depth**2 bytes of indentation
        value = "\n" + "".join(" " * i + "a:\n" for i in range(1, depth)) + " " * depth + "1"
    doc = copy.deepcopy(BASE)
    *parents, leaf = where.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = "NESTED"
    text = _dump(doc).decode().replace("NESTED", value.replace("\n", "\n" + "  " * len(parents)))
    err = _load(spec_file, text.encode())
    assert isinstance(err, ConfigError)


@fuzz(60)
@given(levels=st.integers(1, 12), fan=st.integers(1, 12), used=st.booleans(),
       where=st.sampled_from(["name", "train.model.labels", "zz_unknown"]))
def test_alias_graphs_fail_fast_or_load_normally(spec_file, levels, fan, used, where):
    anchors = ["l0: &l0 [" + ", ".join(["x"] * fan) + "]"]
    anchors += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
    doc = copy.deepcopy(BASE)
    *parents, leaf = where.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = "ALIAS"
    body = _dump(doc).decode().replace("ALIAS", f"*l{levels - 1}" if used else "x")
    text = "zz_anchors:\n" + "".join(f"  {a}\n" for a in anchors) + body
    err = _load(spec_file, text.encode())
    assert isinstance(err, ConfigError)  # zz_anchors itself is an unknown key
    expanded = sum(fan ** (i + 1) + 1 for i in range(levels))
    if expanded > safe_yaml.MAX_NODES:
        assert "aliases here expand to over" in str(err)

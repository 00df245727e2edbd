"""Read an experiment YAML (safe_load only), apply `key=value` overrides, validate.

Every problem is collected into one ConfigError: the dotted field path, the bad value, what is
allowed, and "did you mean ...?" for unknown keys.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainers.errors import did_you_mean

from .errors import ConfigError
from .spec import ExperimentSpec


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentSpec:
    """The validated spec in `path`, with `a.b.c=value` overrides applied first."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(source, [f"no such file: {p.resolve()}"])
    doc = parse_yaml(p.read_text(encoding="utf-8"), source)
    for item in overrides:
        apply_override(doc, item, source)
    return validate_doc(doc, source)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(err, "problem", None) or str(err)
        hint = " (zerotune reads YAML with safe_load: no !!python tags)" if "tag" in str(what) else ""
        raise ConfigError(source, [f"{where}not valid YAML: {what}{hint}"]) from None
    if doc is None:
        raise ConfigError(source, ["the file is empty; a spec needs at least `name:` and `train:`"])
    if not isinstance(doc, dict):
        raise ConfigError(
            source, [f"the top level must be a mapping (name:, train:, ...); got a {type(doc).__name__}"]
        )
    return doc


def apply_override(doc: dict[str, Any], item: str, source: str) -> None:
    """Apply one `dotted.key=value` (value parsed as a YAML scalar) to the raw document."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(source, [f"override {item!r} must look like dotted.key=value, e.g. train.optim.lr=1e-4"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: Any = doc
    parts = key.strip().split(".")
    i = 0
    while i < len(parts) - 1:
        # Search-space keys contain dots (`optim.lr`): prefer the longest key that exists.
        for j in range(len(parts) - 1, i, -1):
            joined = ".".join(parts[i:j])
            if isinstance(node, dict) and joined in node and j < len(parts):
                node, i = node[joined], j
                break
        else:
            if not isinstance(node, dict):
                raise ConfigError(source, [f"override {key}: {'.'.join(parts[:i])} is not a mapping"])
            node = node.setdefault(parts[i], {})
            i += 1
    if not isinstance(node, dict):
        raise ConfigError(source, [f"override {key}: {'.'.join(parts[:-1])} is not a mapping"])
    node[parts[-1]] = value


def validate_doc(doc: dict[str, Any], source: str = "<spec>") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(source, format_errors(err)) from None


def format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc, allowed = _walk(e["loc"])
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], allowed)
            problems.append(f"{path}: unknown key.{hint} Allowed here: {', '.join(sorted(allowed))}")
        elif e["type"] == "missing":
            problems.append(f"{path}: required, but missing")
        elif not loc:  # cross-section checks report their own paths, one per line
            problems += e["msg"].removeprefix("Value error, ").splitlines()
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: got {_short(e.get('input'))}; {msg}")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, Annotated, dict, list)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    return []


def _container_value(ann: Any) -> Any | None:
    """For dict[K, V] or list[V] (possibly Optional), the V annotation."""
    for a in [ann, *typing.get_args(ann)]:
        origin = typing.get_origin(a)
        if origin is dict:
            return typing.get_args(a)[1]
        if origin is list:
            return typing.get_args(a)[0]
    return None


def _is_tag(part: Any, models: list[type[BaseModel]]) -> bool:
    return any(
        typing.get_origin(f.annotation) is typing.Literal and part in typing.get_args(f.annotation)
        for m in models
        for f in m.model_fields.values()
    )


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], set[str]]:
    """Walk pydantic's error location through the schema: the path a user wrote (union tags
    dropped) and the field names allowed where the last key sits (for "did you mean")."""
    models: list[type[BaseModel]] = [ExperimentSpec]
    pending: Any = None
    shown: list[str] = []
    allowed: set[str] = set()
    for part in loc:
        if pending is not None:  # a dict key or list index: step into the value type
            shown.append(str(part))
            models, pending = _models_in(pending), None
            continue
        fields = {n: f for m in models for n, f in m.model_fields.items()}
        if len(models) > 1 and part not in fields and _is_tag(part, models):
            continue  # a discriminated union's tag: not something the user wrote
        shown.append(str(part))
        allowed = set(fields)
        if part not in fields:
            models = []
            continue
        ann = fields[part].annotation
        inner = _models_in(ann)
        if inner:
            models = inner
        else:
            pending = _container_value(ann)
            models = []
    return shown, allowed

"""Read an experiment YAML (safe_load only), apply `key=value` overrides, validate.

Every problem is collected into one ConfigError: the dotted field path, the bad value, what is
allowed, and "did you mean ...?" for unknown keys.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from trainers.config import set_dotted
from trainers.errors import did_you_mean, looks_secret, preview

from . import safe_yaml
from .errors import ConfigError
from .spec import ExperimentSpec


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentSpec:
    """The validated spec in `path`, with `a.b.c=value` overrides applied first."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(source, [f"no such file: {p.resolve()}"])
    doc = parse_yaml(_read(p, source), source)
    for item in overrides:
        apply_override(doc, item, source)
    return validate_doc(doc, source)


def _read(p: Path, source: str) -> str:
    """The file's text. Read as bytes (at most the size limit) so that a byte that is not UTF-8 is
    reported with its line, not as a UnicodeDecodeError."""
    try:
        with p.open("rb") as f:
            data = f.read(safe_yaml.MAX_BYTES + 1)
        return safe_yaml.decode(data)
    except OSError as err:
        raise ConfigError(source, [f"cannot read the file: {err.strerror or type(err).__name__}"]) from None
    except safe_yaml.YAMLProblem as err:
        raise ConfigError(source, [str(err)]) from None


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        doc = safe_yaml.load(text)
    except safe_yaml.YAMLProblem as err:
        hint = " (zerotune reads YAML with safe_load: no !!python tags)" if "constructor for the tag" in str(err) else ""
        raise ConfigError(source, [f"{err}{hint}"]) from None
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
        # Name the shape, not the item: a mistyped `env_vars.GH_TOKEN:abc` would print a secret.
        raise ConfigError(source, [f"override {preview(key.split(':')[0])} must look like dotted.key=value, "
                                   "e.g. train.optim.lr=1e-4"])
    try:
        value = safe_yaml.load(raw) if raw.strip() else None
    except safe_yaml.YAMLProblem:
        value = raw  # not YAML: the text itself (the schema says whether a string fits)
    try:
        if not _set_search_domain(doc, key.strip(), value):
            set_dotted(doc, key.strip(), value)
    except ValueError as err:
        raise ConfigError(source, [f"override {key}: {err}"]) from None


_SPACE = "tune.search_space."
_DOMAIN_FIELDS = {"type", "low", "high", "q", "values"}  # what a domain holds; no train field has these names


def _set_search_domain(doc: dict[str, Any], key: str, value: Any) -> bool:
    """`tune.search_space.lora.r=...` (a whole domain) or `tune.search_space.lora.r.low=2` (one of
    its fields), whether or not the file already searches lora.r: search-space keys are dotted paths
    themselves, so splitting at every dot would file the domain under `lora: {r: ...}`."""
    if not key.startswith(_SPACE) or len(key) == len(_SPACE):
        return False
    tune = doc.setdefault("tune", {})
    space = tune.setdefault("search_space", {}) if isinstance(tune, dict) else None
    if not isinstance(space, dict):
        return False  # set_dotted says which part is not a mapping
    path, _, field = key[len(_SPACE):].rpartition(".")
    if path and field in _DOMAIN_FIELDS:
        domain = space.setdefault(path, {})
        if not isinstance(domain, dict):
            raise ValueError(f"tune.search_space.{path} is not a mapping")
        domain[field] = value
    else:
        space[key[len(_SPACE):]] = value
    return True


def validate_doc(doc: dict[str, Any], source: str = "<spec>") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(source, format_errors(err)) from None


MAX_PROBLEMS = 50  # a generated file can hold thousands of mistakes; the first ones say what is wrong


def format_errors(err: ValidationError) -> list[str]:
    problems = []
    errors = err.errors(include_url=False)
    for e in errors[:MAX_PROBLEMS]:
        loc, allowed = _walk(e["loc"])
        loc = [_clip(part) for part in loc]
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], allowed)
            problems.append(f"{path}: unknown key.{hint} Allowed here: {', '.join(sorted(allowed))}")
        elif e["type"] == "missing":
            problems.append(f"{path}: required, but missing")
        elif not loc:  # cross-section checks report their own paths, one per line
            problems += [_bounded(line) for line in e["msg"].removeprefix("Value error, ").splitlines()]
        else:
            msg = _bounded(e["msg"].removeprefix("Value error, "))
            problems.append(f"{path}: got {preview(e.get('input'), hide=_secret_path(loc))}; {msg}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
    return problems


def _bounded(msg: str, room: int = 600) -> str:
    """A validator's message, cut short: some quote what they reject, which may be a huge string."""
    return msg if len(msg) <= room else msg[:room] + " ..."


def _clip(part: str, room: int = 60) -> str:
    """A key as shown in a path: bounded, and quoted when it holds what would garble a message."""
    if len(part) > room:
        return repr(part[:room])[:-1] + "...'"
    return part if part.isprintable() else repr(part)


def _secret_path(loc: list[str]) -> bool:
    """Whether the value at `loc` may be a secret: a key the user named (env_vars' keys) that looks
    like one, or a field where a careless user might paste a token instead of its name."""
    return any(looks_secret(part) and part not in _schema_fields() for part in loc) or loc[-1:] in (
        ["auth_token_env"], ["auth_token_file"])


@functools.cache
def _schema_fields() -> frozenset[str]:
    """Every field name in the spec's schema: ours, never a user's secret (max_new_tokens)."""
    names: set[str] = set()
    todo: list[type[BaseModel]] = [ExperimentSpec]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            todo += _models_in(field.annotation) + _models_in(_container_value(field.annotation))
    return frozenset(names)


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

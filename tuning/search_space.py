"""Search-space paths: check them against `train:`, translate their domains to Ray Tune, and
apply sampled values to `train:`.

A path is dotted into the train section (`optim.lr`, `lora.r`). It must name a leaf field, and
every value its domain can produce must be one that field accepts, so a bad search space fails
when the file loads rather than in a trial an hour later.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ValidationError

from trainers.config import TrainSection
from trainers.errors import did_you_mean

from .config import Choice, Domain, Grid, LogUniform, QUniform, TuneSection, Uniform


def _leaf_problem(path: str) -> str | None:
    """Why `path` does not name a leaf field of TrainSection, or None when it does."""
    model: type[BaseModel] = TrainSection
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        where = ".".join(parts[:i]) or "train"
        if part not in fields:
            return f"{where} has no field {part!r}.{did_you_mean(part, fields)} Fields: {', '.join(fields)}"
        ann = fields[part].annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        last = i == len(parts) - 1
        if last and sub is not None:
            return f"train.{path} is a section; search one of its fields: {', '.join(sub.model_fields)}"
        if not last:
            if sub is None:
                return f"train.{'.'.join(parts[: i + 1])} is a value, not a section"
            model = sub
    return None


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set doc[a][b][c] = value for path 'a.b.c', creating mappings on the way."""
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def apply_values(train: TrainSection, values: dict[str, Any]) -> TrainSection:
    """A new, re-validated TrainSection with each dotted path set to its value."""
    doc = copy.deepcopy(train.model_dump(mode="json"))
    for path, value in values.items():
        set_path(doc, path, plain(value))
    return TrainSection.model_validate(doc)


def check_search_space(tune: TuneSection, train: TrainSection) -> list[str]:
    """Every problem with the search space, each naming `tune.search_space.<path>`."""
    problems = []
    for path, domain in tune.search_space.items():
        where = f"tune.search_space.{path}"
        why = _leaf_problem(path)
        if why:
            problems.append(f"{where}: {why}")
            continue
        for value in domain.examples():
            try:
                apply_values(train, {path: value})
            except ValidationError as err:
                msgs = "; ".join(e["msg"] for e in err.errors())
                problems.append(f"{where}: value {value!r} is rejected by train.{path}: {msgs}")
    return problems


def to_tune(domain: Domain) -> Any:
    """The Ray Tune search domain for one of ours (a grid becomes Tune's grid_search dict)."""
    from ray import tune

    if isinstance(domain, LogUniform):
        return tune.loguniform(domain.low, domain.high)
    if isinstance(domain, Uniform):
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, QUniform):
        if domain.is_integer:  # integer fields (lora.r, max_steps) get ints, both bounds included
            low, high, q = int(domain.low), int(domain.high), int(domain.q)
            # Tune's qrandint excludes the upper bound when q == 1 only; randint always does.
            return tune.randint(low, high + 1) if q == 1 else tune.qrandint(low, high, q)
        return tune.quniform(domain.low, domain.high, domain.q)
    if isinstance(domain, Choice):
        return tune.choice(list(domain.values))
    if isinstance(domain, Grid):
        return tune.grid_search(list(domain.values))
    raise TypeError(f"unknown domain {domain!r}")


def param_space(tune: TuneSection) -> dict[str, Any]:
    """Tune's param_space: one flat key per dotted path, so a trial's config is exactly the values
    it sampled (the train spec itself travels separately)."""
    return {path: to_tune(domain) for path, domain in tune.search_space.items()}


def plain(value: Any) -> Any:
    """A sampled value as plain JSON-able Python (Tune may hand back numpy scalars)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value

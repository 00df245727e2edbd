"""Search-space paths: check them against `train:`, translate their domains to Ray Tune, and
apply sampled values to `train:`.

A path is dotted into the train section (`optim.lr`, `lora.r`). It must name a leaf field, and
every value its domain can produce must be one that field accepts, so a bad search space fails
when the file loads rather than in a trial an hour later.
"""

from __future__ import annotations

import itertools
import math
import random
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from trainers.config import TrainSection, with_values
from trainers.errors import did_you_mean, preview

from .config import Choice, Domain, Grid, LogUniform, QUniform, SchedulerSection, TuneSection, Uniform


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


def apply_values(train: TrainSection, values: dict[str, Any]) -> TrainSection:
    """A new, re-validated TrainSection with each dotted path set to its (sampled) value."""
    return with_values(train, {path: plain(value) for path, value in values.items()})


def check_search_space(tune: TuneSection, train: TrainSection) -> list[str]:
    """Every problem with the search space, each naming `tune.search_space.<path>`: a path that is
    not a field, a domain whose type cannot fit its field (a real number for an integer), a value or
    range end its field rejects, and combinations that break a cross-field rule."""
    problems = []
    for path, domain in tune.search_space.items():
        where = f"tune.search_space.{path}"
        why = _leaf_problem(path) or _type_problem(path, domain)
        if why:
            problems.append(f"{where}: {why}")
            continue
        problems += _value_problems(where, path, domain, train)
    if not problems and len(tune.search_space) > 1:
        problems += _combination_problems(tune, train)
    return problems + _scheduler_problems(tune, train)


_SCHEDULE_PATHS = ("schedule.max_steps", "schedule.eval_every_steps", "schedule.epochs")


def _scheduler_problems(tune: TuneSection, train: TrainSection) -> list[str]:
    """An early-stopping scheduler that can stop nothing: every trial ends at or before the grace
    period. Counted in evaluation rounds, the rungs' unit, wherever the spec bounds them: max_steps /
    eval_every_steps, or one round per epoch; a searched schedule field counts by its every value (or
    range end), and only a space whose every configuration ends within the grace period is refused.
    Where only the data's size tells (eval_every_steps without max_steps), the sweep checks when it
    starts, once the data is prepared (`rounds_problem`). Only a scheduler the spec chose is refused:
    the default one, with nothing to stop, just stops nothing (the sweep says so when it starts)."""
    s = tune.scheduler
    if s.type == "none" or "scheduler" not in tune.model_fields_set:
        return []
    axes = [[plain(v) for v in tune.search_space[p].examples()] if p in tune.search_space else [_base(train, p)]
            for p in _SCHEDULE_PATHS]
    bounds = [_rounds_at_most(max_steps, every, epochs) for max_steps, every, epochs in itertools.product(*axes)]
    if any(b is None for b in bounds):
        return []
    rounds = max(bounds)
    if s.max_t is not None:
        rounds = min(rounds, s.max_t)
    searched = [p for p in _SCHEDULE_PATHS if p in tune.search_space]
    sched = train.schedule
    if searched:
        why = f"every configuration of the searched {', '.join(searched)}"
    elif sched.eval_every_steps:
        why = f"train.schedule.max_steps {sched.max_steps} / eval_every_steps {sched.eval_every_steps}"
    else:
        why = f"one round per epoch, train.schedule.epochs {sched.epochs}"
    problem = rounds_problem(s, rounds, why, at_most=True)
    return [problem] if problem else []


def _base(train: TrainSection, path: str) -> Any:
    return getattr(train.schedule, path.split(".", 1)[1])


def _rounds_at_most(max_steps: Any, every: Any, epochs: Any) -> int | None:
    """The most evaluation rounds a trial makes (trainers/loop.py), or None when the data's size decides."""
    if every:
        return math.ceil(max_steps / every) if max_steps else None
    return int(epochs)  # one round per epoch; max_steps may end training sooner


def rounds_problem(scheduler: SchedulerSection, rounds: int, why: str, at_most: bool = False) -> str | None:
    """What to say when trials of (`at_most`) `rounds` evaluation rounds all end within the scheduler's
    grace period."""
    if scheduler.type == "none" or rounds > scheduler.grace_period:
        return None
    name = "ASHA" if scheduler.type == "asha" else "successive halving"
    fix = f"Lower grace_period below {rounds}, " if rounds > 1 else ""
    return (f"tune.scheduler.grace_period: every trial ends after {'at most ' if at_most and rounds > 1 else ''}{rounds} "
            f"evaluation round(s) ({why}), within the grace period of {scheduler.grace_period}, so {name} can stop "
            f"nothing early. {fix}evaluate more often (train.schedule.eval_every_steps), train longer, or set "
            "tune.scheduler.type: none")


MAX_REPORTED = 3  # rejected values (or combinations) listed per problem; the rest are counted
MAX_COMBINATIONS = 256  # each one validates the whole train section again (well under 1 ms)


def _leaf_annotation(path: str) -> Any:
    """The annotation of the leaf field `path` names (a valid path: see _leaf_problem)."""
    model: Any = TrainSection
    *parents, leaf = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].annotation


def _number_kind(ann: Any) -> type | None:
    """int or float for a numeric field (Optional included), else None (bool, str, Literal, ...)."""
    args = [a for a in typing.get_args(ann) if a is not type(None)] if _is_union(ann) else [ann]
    if len(args) == 1 and args[0] in (int, float):
        return args[0]
    return None


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _type_problem(path: str, domain: Domain) -> str | None:
    """Why a continuous domain cannot produce values of its field's type. Choice and grid values
    are validated one by one instead, so they need no check here."""
    if isinstance(domain, (Choice, Grid)):
        return None
    kind = _number_kind(_leaf_annotation(path))
    field = f"train.{path}"
    if kind is float or (kind is int and isinstance(domain, QUniform) and domain.is_integer):
        return None
    if kind is int and isinstance(domain, QUniform):
        step = domain.low if not float(domain.low).is_integer() else domain.low + domain.q
        return (f"{field} takes integers, but quniform with q {domain.q:g} samples values such as {step:g}; "
                "use an integer q with integer low and high, or type: grid/choice")
    if kind is int:
        return (f"{field} takes integers, but {domain.type} samples any real number in [{domain.low:g}, "
                f"{domain.high:g}]; use type: quniform with an integer q (e.g. q: 1), or type: grid/choice")
    return (f"{field} is not a number, so {domain.type} cannot sample it; list the values to try with "
            "type: choice or type: grid")


def _candidates(domain: Domain) -> list[tuple[str, Any]]:
    """What to validate for a domain, with a label: each grid/choice value, or a range's two ends
    (field bounds are intervals, so the ends stand for every value between them)."""
    if isinstance(domain, (Choice, Grid)):
        return [("value", v) for v in domain.values]
    low, high = domain.examples()
    return [("low", low), ("high", high)]


def _rejection(err: ValidationError) -> str:
    return "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors(include_url=False))


def _value_problems(where: str, path: str, domain: Domain, train: TrainSection) -> list[str]:
    """Each value (or range end) the field rejects, with the base spec's other values."""
    candidates = _candidates(domain)
    rejected = []
    for label, value in candidates:
        try:
            apply_values(train, {path: value})
        except ValidationError as err:
            rejected.append(f"{label} {preview(value, 40)} is rejected by train.{path}: {_rejection(err)}")
    more = f" (and {len(rejected) - MAX_REPORTED} more values)" if len(rejected) > MAX_REPORTED else ""
    fix = "narrow the range" if isinstance(domain, (Uniform, LogUniform, QUniform)) else "drop or fix the value"
    if rejected and len(rejected) == len(candidates):
        # Not one configuration could start: say so first, then why.
        every = "both ends of the range are" if len(candidates) == 2 and fix == "narrow the range" else (
            "every value is" if len(candidates) > 1 else "its only value is")
        return [f"{where}: {every} rejected, so no trial could start: " + "; ".join(rejected[:MAX_REPORTED]) + more
                + ". Use values train." + path + " accepts"]
    return [f"{where}: {r}; {fix}{more}" for r in rejected[:MAX_REPORTED]]


def _combination_problems(tune: TuneSection, train: TrainSection) -> list[str]:
    """Cross-field rules (validation_fraction + test_fraction, zero_stage x offload_optimizer) see
    one combination at a time, so try every combination of grid/choice values and range ends."""
    axes = {path: [v for _, v in _candidates(d)] for path, d in tune.search_space.items()}
    complete = math.prod(len(v) for v in axes.values()) <= MAX_COMBINATIONS  # every combination is tried
    if not complete:
        # Too many to try: numeric axes shrink to their min and max, which decide the rules that
        # are sums and thresholds; if that is still too many, the first MAX_COMBINATIONS are tried.
        axes = {path: _extremes(values) for path, values in axes.items()}
    paths = list(axes)
    failures: dict[tuple[str, str], list[str]] = {}  # (paths, rejection) -> combinations
    valid = 0
    for combo in itertools.islice(itertools.product(*axes.values()), MAX_COMBINATIONS):
        values = dict(zip(paths, combo, strict=True))
        try:
            apply_values(train, values)
            valid += 1
        except ValidationError as err:
            for e in err.errors(include_url=False):  # one rule each, with the paths it reads
                involved = _involved(paths, e["loc"])
                where = ", ".join(f"tune.search_space.{p}" for p in involved)
                shown = ", ".join(f"{p}={preview(values[p], 30)}" for p in involved)
                seen = failures.setdefault((where, e["msg"].removeprefix("Value error, ")), [])
                if shown not in seen:
                    seen.append(shown)
    problems = []
    if failures and complete and not valid:
        problems.append(f"tune.search_space: every combination of its values is rejected, so no trial could start "
                        f"({', '.join(paths)}); see below")
    for (where, why), combos in failures.items():
        more = f" (and {len(combos) - MAX_REPORTED} more)" if len(combos) > MAX_REPORTED else ""
        problems.append(f"{where}: the combination {'; '.join(combos[:MAX_REPORTED])}{more} is rejected: {why}; "
                        "every combination of grid/choice values and range ends must be valid, so narrow the values")
    return problems


def _extremes(values: list[Any]) -> list[Any]:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and len(values) > 2:
        return [min(numbers), max(numbers)]
    return values


def _involved(paths: list[str], loc: tuple[Any, ...]) -> list[str]:
    """The searched paths under the section an error sits in (all of them for a train-level rule)."""
    pre = ".".join(str(p) for p in loc)
    return [p for p in paths if not pre or p == pre or p.startswith(pre + ".")] or paths


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
    it sampled (the train spec itself travels separately).

    Tune runs a grid in the order its values are written, usually smallest first, so the weakest
    configurations would run first and set ASHA's first cut-offs. trial_order 'shuffled' permutes
    each grid's values with a fixed seed: the same order on every run (a resumed sweep, a rerun)."""
    space = {}
    for i, (path, domain) in enumerate(tune.search_space.items()):
        if isinstance(domain, Grid) and tune.trial_order == "shuffled":
            values = list(domain.values)
            random.Random(i).shuffle(values)
            domain = domain.model_copy(update={"values": values})
        space[path] = to_tune(domain)
    return space


def plain(value: Any) -> Any:
    """A sampled value as plain JSON-able Python (Tune may hand back numpy scalars)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value

"""The `tune:` section: which `train:` fields to search, how, and when to stop weak trials.

Search-space keys are dotted paths into `train:` (`optim.lr`, `lora.r`); the experiment spec
checks, when the file loads, that each path exists and that every value a domain can produce
is one its field accepts.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from trainers.config import Section, TrainSection
from trainers.tasks import get_task


class LogUniform(Section):
    type: Literal["loguniform"] = Field(description="Sample log-uniformly in [low, high].")
    low: float = Field(gt=0.0, description="Lower bound (> 0).")
    high: float = Field(gt=0.0, description="Upper bound (> low).")

    @model_validator(mode="after")
    def _order(self) -> LogUniform:
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got low={self.low}, high={self.high}")
        return self

    def examples(self) -> list[Any]:
        return [self.low, self.high]


class Uniform(Section):
    type: Literal["uniform"] = Field(description="Sample uniformly in [low, high].")
    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound (> low).")

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got low={self.low}, high={self.high}")
        return self

    def examples(self) -> list[Any]:
        return [self.low, self.high]


class QUniform(Section):
    type: Literal["quniform"] = Field(description="Sample uniformly in [low, high], rounded to a multiple of q.")
    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound (> low).")
    q: float = Field(gt=0.0, description="Quantum (> 0).")

    @model_validator(mode="after")
    def _order(self) -> QUniform:
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got low={self.low}, high={self.high}")
        # Ray Tune quantizes between multiples of q; say so at load time, not when the sweep starts.
        for name, bound in (("low", self.low), ("high", self.high)):
            if not math.isclose(bound / self.q, round(bound / self.q), abs_tol=1e-9):
                raise ValueError(f"{name} must be a multiple of q; got {name}={bound:g}, q={self.q:g}")
        return self

    @property
    def is_integer(self) -> bool:
        return all(float(x).is_integer() for x in (self.low, self.high, self.q))

    def examples(self) -> list[Any]:
        cast = int if self.is_integer else float
        return [cast(self.low), cast(self.high)]


class Choice(Section):
    type: Literal["choice"] = Field(description="Sample one of `values` at random.")
    values: list[Any] = Field(min_length=1, description="Candidate values.")

    def examples(self) -> list[Any]:
        return list(self.values)


class Grid(Section):
    type: Literal["grid"] = Field(description="Try every one of `values` (crossed with other grids).")
    values: list[Any] = Field(min_length=1, description="Values, each tried.")

    def examples(self) -> list[Any]:
        return list(self.values)


Domain = Annotated[LogUniform | Uniform | QUniform | Choice | Grid, Field(discriminator="type")]


class SchedulerSection(Section):
    """Early stopping (tuning/schedulers.py). Rungs count evaluation rounds: a trial is judged after
    grace_period rounds, then after grace_period x reduction_factor^k rounds."""

    type: Literal["asha", "successive_halving", "none"] = Field(
        default="asha", description="'asha' (default): asynchronous, nothing waits; for many trials (tens). "
        "'successive_halving': synchronous; every trial waits at each rung until all have reached it, then the "
        "best 1/reduction_factor go on; for few trials, where ASHA's first trials pass empty rungs and little is "
        "saved (each wait pauses a trial and restarts it from its checkpoint). 'none': every trial runs in full."
    )
    grace_period: int = Field(default=1, ge=1, description="Evaluation rounds every trial gets before it can stop.")
    reduction_factor: float = Field(default=2.0, gt=1.0, description="Keep 1/reduction_factor of the trials per rung.")
    max_t: int | None = Field(
        default=None, ge=1, description="Most evaluation rounds a trial runs; empty: as many as training makes."
    )
    metric: str | None = Field(
        default=None, description="What the rungs compare trials on; empty: the sweep's metric. The winner is "
        "still the best by the sweep's metric. eval_loss judges a classifier's first rounds better than "
        "macro-F1, which stays at the majority-class floor until a trial has learned something."
    )

    @model_validator(mode="after")
    def _grace_within_max_t(self) -> SchedulerSection:
        # Rungs are evaluation rounds (one Tune result per round): a trial can first be stopped
        # after grace_period rounds, so grace_period >= max_t stops nothing.
        if self.type != "none" and self.max_t is not None and self.max_t <= self.grace_period:
            raise ValueError(f"max_t must be above grace_period, or no trial can stop early; got max_t={self.max_t}, "
                             f"grace_period={self.grace_period}. Lower grace_period, raise max_t, or set type: none")
        return self

    @property
    def label(self) -> str:
        """How the sweep's plan line names it."""
        if self.type == "none":
            return "no early stopping"
        name = "ASHA" if self.type == "asha" else "synchronous successive halving"
        rungs = f", rungs on {self.metric}" if self.metric else ""
        return (f"{name} (grace {self.grace_period}, reduction {self.reduction_factor:g}, "
                f"max_t {self.max_t or 'none'}{rungs})")


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


class BudgetSection(Section):
    """What a sweep may spend, counted from its first evaluation round; when either runs out, Tune
    stops the running trials and the best result so far wins (tuning/budget.py: SweepBudget)."""

    wall_time: str | float | None = Field(
        default=None, description="Wall time of the whole sweep: '2h', '90m', '1h30m', '45s', or seconds."
    )
    node_hours: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="Node-hours: the sweep's wall time times the nodes its concurrent trials occupy.",
    )

    @model_validator(mode="after")
    def _readable(self) -> BudgetSection:
        self.wall_seconds  # noqa: B018 (raises on a value it cannot read)
        return self

    @property
    def wall_seconds(self) -> float | None:
        if self.wall_time is None:
            return None
        if isinstance(self.wall_time, (int, float)):
            seconds = float(self.wall_time)
        else:
            m = _DURATION.match(self.wall_time)
            if not m or not any(m.groups()):
                raise ValueError(f"wall_time: got {self.wall_time[:40]!r}; write it as '2h', '90m', '1h30m', "
                                 "'45s' or a number of seconds")
            h, mi, sec = (float(g or 0) for g in m.groups())
            seconds = h * 3600 + mi * 60 + sec
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"wall_time: must be a positive, finite duration; got {self.wall_time!r}")
        return seconds


class TuneSection(Section):
    metric: str | None = Field(default=None, description="Metric to optimise; empty: train's metric.")
    mode: Literal["max", "min"] | None = Field(default=None, description="Better high or low; empty: train's.")
    num_samples: int = Field(
        default=1, ge=1, description="Samples of the space (each grid point is repeated this many times)."
    )
    search_space: dict[str, Domain] = Field(
        default_factory=dict, description="Dotted paths into `train:` mapped to domains, e.g. optim.lr."
    )
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection, description="Early stopping.")
    trial_order: Literal["shuffled", "grid"] = Field(
        default="shuffled", description="Order of grid values: 'shuffled' (seeded) so the first trials, which "
        "set ASHA's first cut-offs, are not always the lowest values; 'grid': as written."
    )
    search_alg: Literal["random", "optuna"] = Field(
        default="random", description="Random/grid search, or Optuna's TPE when optuna is installed."
    )
    max_concurrent_trials: int | None = Field(
        default=None, ge=1, description="Trials at once; empty: as many as the cluster's CPUs/GPUs fit."
    )
    time_budget_s: float | None = Field(default=None, gt=0, description="Ray Tune's own limit: stop the sweep this "
                                        "many seconds after it starts (start-up included).")
    budget: BudgetSection | None = Field(
        default=None, description="Wall time and/or node-hours the sweep may use from its first evaluation round; "
        "an estimate is printed once the first trial has measured its throughput (and by `zerotune plan --calibrate`)."
    )

    def resolved_metric(self, train: TrainSection) -> str:
        return self.metric or train.resolved_metric

    def resolved_mode(self, train: TrainSection) -> Literal["max", "min"]:
        """The mode given; else train's when the metric is train's; else what the metric's name says."""
        if self.mode is not None:
            return self.mode
        if not self.metric:
            return train.resolved_mode
        return get_task(train.model.task).mode_of(self.metric)

    @model_validator(mode="after")
    def _optuna_samples(self) -> TuneSection:
        grids = [path for path, d in self.search_space.items() if isinstance(d, Grid)]
        if self.search_alg == "optuna" and grids:
            raise ValueError(f"search_alg 'optuna' samples its own points and cannot take grid domains "
                             f"({', '.join(grids)}); use type: choice, or search_alg: random")
        return self

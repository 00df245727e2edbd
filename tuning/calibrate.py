"""A sweep's time and cost from a short calibration: a few steps of its smallest and its largest
configuration on the connected cluster (`zerotune plan --calibrate`).

No formula knows how fast a cluster's CPUs or GPUs run a model, so two short Train runs (the one
training path, `trainers.fit`) measure it: the configurations with the least and the most compute
per worker step among the sweep's searched values. Compute per step is the usual forward/backward
count, tokens x (4 x parameters + 2 x trainable parameters, + 2 x parameters recomputed with
gradient checkpointing); every other configuration's step time is interpolated linearly between
the two measured points. A trial's time is the measured fixed cost (worker start, imports, model,
data, DeepSpeed) plus its steps; the sweep's wall time and node-hours under its scheduler then
follow as in tuning/budget.py. The caller connects to Ray first.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass

from trainers.config import TrainSection
from trainers.console import say
from trainers.storage import Location

from .budget import Estimate, first_stop_s, rung_budget_line, sweep_estimate
from .config import SchedulerSection, TuneSection
from .search_space import apply_values

STEPS = 6  # two rounds of 3: the second round's throughput excludes the first step's warm-up
_MAX_CONFIGS = 64


@dataclass(frozen=True)
class Config:
    label: str  # the searched values, or "base spec"
    train: TrainSection
    work: float  # compute per worker per optimizer step (FLOP-proportional)


@dataclass(frozen=True)
class Measured:
    config: Config
    step_s: float  # seconds per optimizer step, steady state
    setup_s: float  # a run's fixed cost on its slowest worker


@dataclass(frozen=True)
class Calibration:
    smallest: Measured
    largest: Measured
    trial_s: dict[str, float]  # estimated full trial time per configuration label
    estimate: Estimate
    scheduler: SchedulerSection
    round_s: float  # an evaluation round of the fastest configuration
    first_stop_s: float | None  # the sweep's first round to the scheduler's first possible stop

    def lines(self, budget_s: float | None, nodes: int) -> list[str]:
        out = [f"calibration ({STEPS} steps each): {m.config.label}: {m.step_s:.3f} s/step, setup {m.setup_s:.0f}s"
               for m in (self.smallest, self.largest) if m is self.smallest or m.config != self.smallest.config]
        out.append("sweep estimate from the calibration: " + self.estimate.line(budget_s, nodes))
        warning = rung_budget_line(budget_s, self.first_stop_s, self.scheduler, self.round_s)
        return out + ([warning] if warning else [])


def work_per_step(train: TrainSection) -> float:
    """Compute one worker does per optimizer step, up to a constant (FLOPs / 2)."""
    from trainers.memory import model_shape

    shape = model_shape(train)
    p, t = shape.total_params, shape.trainable_params
    tokens = train.data.max_length * train.schedule.micro_batch_size * train.schedule.gradient_accumulation_steps
    per_token = 2 * p + 2 * p + 2 * t + (2 * p if train.model.gradient_checkpointing else 0)
    return tokens * per_token


def configs(tune: TuneSection | None, train: TrainSection) -> list[Config]:
    """Every combination of the searched values (a range by its two ends), at most _MAX_CONFIGS."""
    if tune is None or not tune.search_space:
        return [Config("base spec", train, work_per_step(train))]
    axes = {path: d.examples() for path, d in tune.search_space.items()}
    out = []
    for combo in itertools.islice(itertools.product(*axes.values()), _MAX_CONFIGS):
        values = dict(zip(axes, combo, strict=True))
        try:
            variant = apply_values(train, values)
        except ValueError:  # the loader already refused combinations that do not validate
            continue
        out.append(Config(", ".join(f"{k}={v}" for k, v in values.items()), variant, work_per_step(variant)))
    return out


def total_steps(train: TrainSection, train_rows: int) -> int:
    """The loop's step count (trainers/loop.py) for `train_rows` rows split over the workers."""
    per_rank = math.ceil(train_rows / train.scaling.num_workers)  # DistributedSampler pads to equal shards
    per_epoch = max(1, math.ceil(per_rank / train.schedule.micro_batch_size)
                    // train.schedule.gradient_accumulation_steps)
    steps = train.schedule.epochs * per_epoch
    return min(steps, train.schedule.max_steps) if train.schedule.max_steps else steps


def step_time(work: float, small: Measured, large: Measured) -> float:
    """Seconds per step at `work`, on the line through the two measured points (proportional to work
    when they coincide or the line would give less than nothing)."""
    w0, w1 = small.config.work, large.config.work
    if w1 <= w0 or large.step_s <= small.step_s:
        rate = max(small.step_s / max(w0, 1.0), large.step_s / max(w1, 1.0))
        return rate * work
    slope = (large.step_s - small.step_s) / (w1 - w0)
    return max(small.step_s + slope * (work - w0), 0.0)


def measure(config: Config, *, storage_path: str, name: str, steps: int = STEPS) -> Measured:
    """A short Train run of `config`; its last round's throughput (after the first round's warm-up)."""
    from trainers.launch import fit

    schedule = config.train.schedule.model_copy(update={"max_steps": steps, "eval_every_steps": max(1, steps // 2)})
    scaling = config.train.scaling.model_copy(update={"max_failures": 0, "keep_checkpoints": 1})
    train = config.train.model_copy(update={"schedule": schedule, "scaling": scaling})
    run = f"{name}-{uuid.uuid4().hex[:8]}"  # a fresh run: a calibration never resumes an old one
    result = fit(train, storage_path=storage_path, name=run, verbose=False)
    report = result.final
    if report is None or report.samples_per_s <= 0:
        raise RuntimeError(f"the calibration run {run} reported no throughput")
    step_s = train.global_batch_size / report.samples_per_s
    # Train's launch onwards (a trial pays that too); the driver stage here is this command's own start.
    setup = (report.setup_launch_s + report.setup_worker_s + report.setup_imports_s + report.setup_model_s
             + report.setup_data_s + report.setup_deepspeed_s)
    return Measured(config=config, step_s=step_s, setup_s=setup)


def calibrate(tune: TuneSection | None, train: TrainSection, *, storage_path: str, name: str,
              concurrency: int, nodes: int, trials: int) -> Calibration:
    """Measure the smallest and largest configuration, then estimate the whole sweep."""
    from trainers.prepared import prepare_data

    all_configs = configs(tune, train)
    smallest = min(all_configs, key=lambda c: c.work)
    largest = max(all_configs, key=lambda c: c.work)
    say(f"calibrating {name}: {STEPS} steps of the smallest configuration ({smallest.label})"
        + (f" and of the largest ({largest.label})" if largest is not smallest else ""))
    runs = Location.parse(storage_path).join(name, "calibration")  # beside the sweep, out of its way
    # Prepared where the runs' fit() looks for it (<runs>/prepared), so they reuse it.
    train_rows = prepare_data(train, runs.join("prepared"))[1].manifest.rows["train"]
    small = measure(smallest, storage_path=str(runs), name="smallest")
    large = small if largest is smallest else measure(largest, storage_path=str(runs), name="largest")
    setup = max(small.setup_s, large.setup_s)
    times: dict[str, float] = {}
    rounds: list[int] = []
    round_times: list[float] = []
    for c in all_configs:
        steps = total_steps(c.train, train_rows)
        times[c.label] = setup + steps * step_time(c.work, small, large)
        every = c.train.schedule.eval_every_steps
        rounds.append(math.ceil(steps / every) if every else c.train.schedule.epochs)
        round_times.append(steps / max(rounds[-1], 1) * step_time(c.work, small, large))
    scheduler = tune.scheduler if tune is not None else SchedulerSection(type="none")
    est = sweep_estimate(trial_times=list(times.values()), trials=trials, concurrency=concurrency,
                         rounds=max(rounds), scheduler=scheduler, nodes=nodes)
    round_s = min(round_times)
    stop = first_stop_s(scheduler, round_s=round_s, setup_s=setup, trial_s=est.trial_s, trials=trials,
                        concurrency=concurrency)
    return Calibration(smallest=small, largest=large, trial_s=times, estimate=est, scheduler=scheduler,
                       round_s=round_s, first_stop_s=stop)

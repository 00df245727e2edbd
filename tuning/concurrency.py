"""How many trials run at once: derived from the cluster's CPUs/GPUs and what one trial needs,
or the user's number checked against them.

A trial is one Train run of `num_workers` workers; its Tune driver takes no CPU (see trial.py),
so the workers' CPUs and GPUs are what limit concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from trainers.config import ScalingSection
from trainers.errors import UserError

_EPS = 1e-9


class ResourcesError(UserError):
    """One trial needs more than the cluster has."""


def plan_concurrency(scaling: ScalingSection, requested: int | None, total: Mapping[str, float],
                     nodes: Sequence[Mapping[str, float]], by_memory: int | None = None) -> tuple[int, str | None]:
    """(max_concurrent_trials, a note for the user or None).

    `total` is ray.cluster_resources(); `nodes` the resources of each alive node; `by_memory` how
    many trials the cluster's memory holds at once (cluster/plan.py's Plan.trials_by_memory; None:
    not known). Ray places trials by CPUs and GPUs only, so memory caps the count here: a 24 GiB
    node whose trials need 10 GiB each runs two, whatever its CPUs. Raises ResourcesError when a
    single trial (or one of its workers) can never be placed.
    """
    need = {"CPU": scaling.cpus_per_trial, "GPU": scaling.gpus_per_trial}
    per_worker = {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker if scaling.use_gpu else 0.0}
    problems = []
    for res, amount in per_worker.items():
        biggest = max((n.get(res, 0.0) for n in nodes), default=0.0)
        if amount > biggest + _EPS:
            problems.append(f"a worker needs {amount:g} {res} but the largest node has {biggest:g}")
    for res, amount in need.items():
        if amount > total.get(res, 0.0) + _EPS:
            problems.append(f"a trial needs {amount:g} {res} (train.scaling: {scaling.num_workers} worker(s)) "
                            f"but the cluster has {total.get(res, 0.0):g}")
    if problems:
        raise ResourcesError("no trial can start: " + "; ".join(problems) + ". Lower train.scaling.num_workers "
                             "or cpus_per_worker/gpus_per_worker, or run on a bigger cluster.")
    fits = min(math.floor(total.get(res, 0.0) / amount + _EPS) for res, amount in need.items() if amount > 0)
    if by_memory is not None:
        memory = max(1, by_memory)  # 0 only with train.plan: warn, which starts the job anyway
        if memory < (requested or fits):
            asked = f"tune.max_concurrent_trials is {requested}" if requested else f"the CPUs/GPUs fit {fits}"
            return memory, (f"{asked}, but the memory plan fits {memory} trial(s) at once, so {memory} run at "
                            "once (`zerotune plan` shows the estimate)")
    if requested is None:
        return fits, None
    if requested > fits:
        return requested, (f"tune.max_concurrent_trials is {requested} but the cluster fits {fits} trial(s) now; "
                           "the rest wait for resources (or for the autoscaler)")
    return requested, None

"""ExperimentSpec: one YAML file, one typed, frozen object.

Each package owns its section; this module only composes them and checks what crosses
sections (search paths exist in `train:`, a trial's GPUs fit the described cluster).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from serving.config import ServeSection
from trainers.config import Section, TrainSection
from trainers.tasks import get_task
from tuning.config import TuneSection
from tuning.search_space import check_search_space

from .config import ClusterSection


class ExperimentSpec(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Run name: letters, digits, '_', '.', '-' (it names the results directory).",
    )
    cluster: ClusterSection = Field(default_factory=ClusterSection, description="Where the job runs.")
    train: TrainSection = Field(description="What to fine-tune and how.")
    tune: TuneSection | None = Field(default=None, description="Hyperparameter search (optional).")
    serve: ServeSection | None = Field(default=None, description="HTTP serving of the result (optional).")

    @model_validator(mode="after")
    def _cross_sections(self) -> ExperimentSpec:
        problems: list[str] = []
        if self.tune is not None:
            problems += check_search_space(self.tune, self.train)
        task = get_task(self.train.model.task)
        for where, metric in (("train.metric", self.train.metric), ("tune.metric", self.tune and self.tune.metric),
                              ("tune.scheduler.metric", self.tune and self.tune.scheduler.metric)):
            problem = task.metric_problem(metric) if metric else None
            if problem:
                problems.append(f"{where}: {problem}")
        max_gpus = self.cluster.max_gpus
        need = self.train.scaling.gpus_per_trial
        if max_gpus is not None and need > max_gpus:
            problems.append(
                f"train.scaling: a run needs {need:g} GPUs but the cluster's node types offer at most "
                f"{max_gpus}; lower train.scaling.num_workers or add GPU workers under cluster.worker_types"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def serving(self) -> ServeSection:
        """The serve: section with its defaults when the file has none (`zerotune serve` still serves)."""
        return self.serve or ServeSection()

    @property
    def tune_metric(self) -> str:
        return self.tune.resolved_metric(self.train) if self.tune else self.train.resolved_metric

    @property
    def tune_mode(self) -> str:
        return self.tune.resolved_mode(self.train) if self.tune else self.train.resolved_mode

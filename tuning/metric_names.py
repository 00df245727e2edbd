"""Which metrics a trial reports, so a misspelt `tune.metric` fails before any trial starts
(Ray Tune would otherwise stop the whole sweep at the first result)."""

from __future__ import annotations

from trainers.config import Task
from trainers.errors import UserError, did_you_mean


def reported_metrics(task: Task) -> list[str]:
    """Metric names every evaluation round reports for `task` (see trainers/loop.py `_evaluate`)."""
    import torch

    from trainers.metrics import classification_metrics, entity_metrics, lm_metrics

    if task == "sequence-classification":
        names = classification_metrics(torch.zeros(2, 2))
    elif task == "token-classification":
        names = entity_metrics(0.0, 0.0, 0.0)
    else:
        names = lm_metrics(0.0, 1.0)
    return ["eval_loss", *(f"eval_{k}" for k in names), "train_loss"]


def check_metric(metric: str, task: Task, where: str) -> None:
    known = reported_metrics(task)
    if metric not in known:
        raise UserError(f"{where}: got {metric!r}, which a {task} run does not report.{did_you_mean(metric, known)} "
                        f"Choose one of: {', '.join(known)}")

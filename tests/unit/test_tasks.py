"""The task registry: each task object declares what the rest of the code needs, and its declared
metric names are exactly what its scores produce (names are data, checked here once)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from serving.routes import ROUTES
from trainers.config import TrainSection
from trainers.tasks import TASKS, TaskName, get_task, task_of_route

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["B-LOC", "I-LOC", "O"]


@pytest.mark.parametrize("name", list(TASKS))
def test_declared_metric_names_are_what_scores_produce(name):
    task = get_task(name)
    labels = LABELS if task.has_labels else None
    counts = torch.ones(task.count_size(labels), dtype=torch.float64)
    produced = {"loss", *task.scores(4.0, 2.0, counts, labels)}
    assert produced == set(task.metric_modes)
    assert task.default_metric in task.reported_metrics()
    assert task.mode_of("eval_loss") == "min" and task.mode_of("train_loss") == "min"


@pytest.mark.parametrize("name", list(TASKS))
def test_every_route_a_task_offers_has_a_handler(name):
    task = get_task(name)
    assert task.routes and all(route in ROUTES for route in task.routes)
    assert task.example_request[0] in task.routes
    assert all(task_of_route(route) is task for route in task.routes)


def test_the_spec_accepts_exactly_the_registered_tasks():
    assert set(TaskName.__args__) == set(TASKS)
    with pytest.raises(ValueError, match="unknown task 'regression'; known: sequence-classification"):
        get_task("regression")


def test_default_metric_and_mode_come_from_the_task():
    def train(task: str, **kw) -> TrainSection:
        return TrainSection.model_validate({"model": {"name_or_path": "m", "task": task}, "data": {"train": "t"}, **kw})

    assert (train("sequence-classification").resolved_metric, train("sequence-classification").resolved_mode) == (
        "eval_macro_f1", "max")
    assert (train("token-classification").resolved_metric, train("causal-lm").resolved_mode) == ("eval_f1", "min")
    assert train("sequence-classification", metric="eval_loss").resolved_mode == "min"
    assert train("causal-lm", metric="eval_perplexity").resolved_mode == "min"


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_no_code_outside_the_registry_switches_on_a_task_name():
    """A fourth task is one new Task subclass: no other module may name a task."""
    offenders = []
    for package in ("cluster", "trainers", "tuning", "serving"):
        for path in (ROOT / package).rglob("*.py"):
            if "tasks" in path.relative_to(ROOT).parts:
                continue
            named = _string_constants(path) & set(TASKS)
            if named:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(named)}")
    assert not offenders, offenders

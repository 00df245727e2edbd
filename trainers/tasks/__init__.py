"""The task registry: one object per task, looked up by the name a spec gives (`train.model.task`).

Modelled on peft's PEFT_TYPE_TO_* tables: dispatch is a lookup here, never a branch on the
name elsewhere. To add a task, write a `Task` subclass (see base.py) and list it below.
"""

from __future__ import annotations

from typing import Literal

from .base import IGNORE, TRAIN_LOSS, Mode, Task
from .causal_lm import CausalLM
from .sequence_classification import SequenceClassification
from .token_classification import TokenClassification

TASKS: dict[str, Task] = {t.name: t for t in (SequenceClassification(), TokenClassification(), CausalLM())}

# The spec's closed choice of task names, derived from the registry.
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def task_of_route(route: str) -> Task | None:
    """The task whose models serve `route` (to explain a 404)."""
    return next((t for t in TASKS.values() if route in t.routes), None)


__all__ = ["IGNORE", "TASKS", "TRAIN_LOSS", "Mode", "Task", "TaskName", "get_task", "task_of_route"]

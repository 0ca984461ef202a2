"""Tasks: preprocessing + postprocessing + metric, by name (``agent.tasks.base``).

Built in: classification, detection, ocr-det, ocr-rec, ocr-cls, raw; a user's own task is a
module the spec names (``agent.tasks.custom``). Standard library + numpy, like the whole agent:
the same code scores a model on a board and will run in its deployment bundle.
"""

from __future__ import annotations

from typing import Any, Optional

from agent.metrics import Evaluator
from agent.tasks.base import TASKS, Task, get_task, register, task_names

__all__ = ["TASKS", "Task", "evaluator_for", "get_task", "register", "task_names"]


def evaluator_for(dataset: Any, module: Optional[str] = None) -> Evaluator:
    """The evaluator of a dataset file's task (``module``: a user task's file); a ValueError names
    a task or label it cannot use."""
    params = dict(dataset.params, module_path=module) if module else dataset.params
    return get_task(dataset.task, params).evaluator(dataset.labels)

"""A user's own task: a Python module the spec names, for what the built-in tasks don't cover.

The module (standard library + numpy on the board; see docs/extending.md) defines::

    METRIC = "my_score"                       # the primary metric's name
    def preprocess(image): ...                # RGB uint8 [H, W, 3] -> the model's input at batch 1
                                              #   (optional: the spec's preprocess: otherwise)
    def postprocess(outputs): ...             # the model's outputs (batch 1) -> a JSON-able prediction
    def metric(predictions, labels): ...      # every prediction and its label text -> {name: value},
                                              #   METRIC among them

``preprocess`` and ``metric`` run on the controller; ``postprocess`` runs on the board, where the
module is shipped with the job and checked by its sha256 like every other artifact, and its
predictions come back for the controller to score.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any, Dict, List

import numpy as np

from agent.metrics import Evaluator
from agent.tasks.base import PredictionsEvaluator, Task, register

REQUIRED = ("METRIC", "postprocess", "metric")


def load_module(path: str) -> ModuleType:
    """Import the task module at ``path``; a ValueError names what it lacks."""
    name = "edgefarm_user_task_%d" % (abs(hash(path)) % 10**8)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError("%s: not a Python module" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise ValueError("%s: a task module defines %s; it lacks %s" % (path, ", ".join(REQUIRED), ", ".join(missing)))
    return module


@register
class Custom(Task):
    name = "custom"

    def __init__(self, params: Dict[str, Any]) -> None:
        super().__init__(params)
        if not params.get("module_path"):
            raise ValueError("a custom task needs its module file")
        self.module = load_module(str(params["module_path"]))

    @property
    def metric(self) -> str:  # type: ignore[override]
        return str(self.module.METRIC)

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Any:
        return self.module.postprocess(outputs)

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        return PredictionsEvaluator(self.metric, lambda _index, outputs: self.module.postprocess(outputs))

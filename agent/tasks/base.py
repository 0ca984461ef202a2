"""What a task is, and the registry of tasks by name.

A task is preprocessing (``agent.tasks.preprocess``, declared in the spec) + postprocessing +
metric. ``postprocess`` turns one sample's model outputs into a prediction a person (or the
deployment bundle) reads; ``evaluator`` scores a whole dataset on the board. A task whose metric
needs a library the board does not have (COCO mAP) or the user's own code returns its
predictions from the board instead (a ``PredictionsEvaluator``), and the controller scores them
(``controller.data.scoring``).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Type, TypeVar

import numpy as np

from agent.metrics import Evaluator
from agent.registry import Registry

T = TypeVar("T", bound=Type["Task"])

# Built-in tasks, imported on first use (``agent.registry``); others join with ``register``.
TASKS: "Registry[Type[Task]]" = Registry("task", {
    "classification": "agent.tasks.classification:Classification",
    "detection": "agent.tasks.detection:Detection",
    "ocr-det": "agent.tasks.ocr:OcrDet",
    "ocr-rec": "agent.tasks.ocr:OcrRec",
    "ocr-cls": "agent.tasks.ocr:OcrCls",
    "raw": "agent.tasks.raw:Raw",
    "custom": "agent.tasks.custom:Custom",
})
# Dataset files written before tasks had names of their own (protocol version 1) say these.
ALIASES = {"det": "ocr-det", "rec": "ocr-rec", "cls": "ocr-cls", "agreement": "raw"}


def register(cls: T) -> T:
    """Class decorator: make a task known by its ``name``."""
    TASKS.register()(cls)
    return cls


def task_names() -> List[str]:
    return TASKS.names()


def known_task(name: str) -> bool:
    return ALIASES.get(name, name) in TASKS


def get_task(name: str, params: Dict[str, Any]) -> "Task":
    """The task ``name`` set up with its parameters; a ValueError names an unknown task."""
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise ValueError("unknown task %r; known: %s" % (name, ", ".join(task_names())))
    return TASKS.get(name)(params)


class Task(abc.ABC):
    name = ""
    metric = ""  # the primary metric: what selection's accuracy budget applies to

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = dict(params)

    @abc.abstractmethod
    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Any:
        """One sample's outputs (batch 1, model output order) -> its JSON-able prediction.
        ``sample`` holds the sample's own facts (original size, geometry) where the task needs them."""

    @abc.abstractmethod
    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        """The evaluator of a dataset with these labels: it scores, or collects predictions."""

    @staticmethod
    def need(labels: Dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in labels:
            raise ValueError("the dataset has no %r labels" % key)
        return labels[key]


class PredictionsEvaluator(Evaluator):
    """Collects each sample's prediction for the controller to score."""

    def __init__(self, metric: str, predict: Callable[[int, List[np.ndarray]], Any]) -> None:
        super().__init__()
        self.metric = metric
        self.predict = predict
        self.predictions: Dict[int, Any] = {}

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        self.predictions[index] = self.predict(index, outputs)

    def _metrics(self) -> Dict[str, Any]:
        return {}

    def result(self) -> Dict[str, Any]:
        return {"metric": self.metric, "value": None, "samples": len(self.seen), "metrics": {},
                "predictions": [self.predictions[i] for i in sorted(self.predictions)]}

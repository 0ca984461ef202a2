"""The task of a model without labelled data: agreement of its outputs with the fp32 model's
on the same seeded inputs (``agent.metrics.AgreementEvaluator``)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from agent.metrics import AgreementEvaluator, Evaluator
from agent.tasks.base import Task, register


@register
class Raw(Task):
    """No labels: agreement of every output with the fp32 model's on the same inputs."""

    name = "raw"
    metric = "agreement"

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        return {"outputs": [np.asarray(o).tolist() for o in outputs]}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        names = self.params.get("outputs") or [k[len("reference:"):] for k in labels if k.startswith("reference:")]
        return AgreementEvaluator([self.need(labels, "reference:" + str(n)) for n in names], [str(n) for n in names])

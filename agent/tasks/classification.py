"""Classification: the model's scores per class -> the top classes; top-1 and top-5 accuracy.

The output is [1, C] (or [C]) logits or probabilities: ranking is the same either way, and a
score is reported as a probability (softmax of logits; probabilities that already sum to 1 are
kept as they are, within float16's rounding).
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from agent.metrics import Evaluator
from agent.tasks.base import Task, register


def probabilities(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if x.size and x.min() >= 0.0 and abs(float(x.sum()) - 1.0) < 1e-2:
        return x
    e = np.exp(x - x.max()) if x.size else x
    return e / e.sum() if x.size else x


@register
class Classification(Task):
    name = "classification"
    metric = "top1"

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        """``{"top": [{"label", "index", "score"}]}``, best first, at most ``top_k`` entries."""
        p = probabilities(outputs[0])
        names = self.params.get("classes") or []
        if names and p.size != len(names):
            raise ValueError("the model gave %d class scores, there are %d class names" % (p.size, len(names)))
        k = min(int(self.params.get("top_k", 5)), p.size)
        order = np.argsort(-p, kind="stable")[:k]
        return {"top": [{"label": names[i] if i < len(names) else str(i), "index": int(i), "score": float(p[i])}
                        for i in order.tolist()]}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        return TopKEvaluator(self.need(labels, "label"), len(self.params.get("classes") or []))


class TopKEvaluator(Evaluator):
    metric = "top1"

    def __init__(self, label: np.ndarray, classes: int) -> None:
        super().__init__()
        self.label = np.asarray(label, dtype=np.int64).reshape(-1)
        self.classes = classes
        self.top1 = self.top5 = 0

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        scores = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        if self.classes and scores.size != self.classes:
            raise ValueError("the model gave %d class scores, the dataset has %d classes" % (scores.size, self.classes))
        truth = int(self.label[index])
        # Ties ranked by class index, as argsort does: a constant output is not "right" for all.
        rank = int(np.sum(scores > scores[truth]) + np.sum(scores[:truth] == scores[truth]))
        self.top1 += rank < 1
        self.top5 += rank < 5

    def _metrics(self) -> Dict[str, Any]:
        n = len(self.seen)
        return {"top1": self.top1 / n if n else 0.0, "top5": self.top5 / n if n else 0.0}

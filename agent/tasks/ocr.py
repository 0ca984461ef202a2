"""The three PaddleOCR tasks on the same mechanism as the others; their metrics are the
evaluators of ``agent.metrics``, unchanged, so OCR models measure exactly as before."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from agent.metrics import (
    ClsEvaluator,
    DetEvaluator,
    Evaluator,
    RecEvaluator,
    ctc_greedy_decode,
    db_boxes,
)
from agent.tasks.base import Task, register
from agent.tasks.classification import probabilities

_DB_KEYS = ("thresh", "box_thresh", "unclip_ratio", "min_size")


@register
class OcrDet(Task):
    """DB text detection: box hmean at IoU 0.5."""

    name = "ocr-det"
    metric = "hmean"

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        prob = np.asarray(outputs[0], dtype=np.float64)
        boxes = db_boxes(prob.reshape(prob.shape[-2:]), **{k: float(self.params[k]) for k in _DB_KEYS if k in self.params})
        return {"boxes": [[round(v, 2) for v in b] for b in boxes]}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        return DetEvaluator(self.need(labels, "boxes"), self.params)


@register
class OcrRec(Task):
    """CTC text recognition: exact match of the decoded line."""

    name = "ocr-rec"
    metric = "exact_match"

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        probs = np.asarray(outputs[0], dtype=np.float64)
        probs = probs.reshape(-1, probs.shape[-1])
        best = probs.max(axis=1)
        keep = probs.argmax(axis=1) != 0
        return {"text": ctc_greedy_decode(probs, sample.get("charset") or self.params.get("charset") or []).strip(),
                "score": float(best[keep].mean()) if keep.any() else 0.0}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        return RecEvaluator(self.need(labels, "text"), self.need(labels, "charset"))


@register
class OcrCls(Task):
    """Text direction, 0 or 180 degrees: accuracy."""

    name = "ocr-cls"
    metric = "accuracy"

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        p = probabilities(outputs[0])
        i = int(p.argmax())
        return {"label": ("0", "180")[i] if i < 2 else str(i), "score": float(p[i])}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        return ClsEvaluator(self.need(labels, "label"))

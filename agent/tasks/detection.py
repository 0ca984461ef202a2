"""Detection: decoders for the two common output families, NMS, boxes back on the original image.

- ``yolo``: one tensor of candidate boxes with class scores, as YOLOv5 exports it ([1, N, 5 + C]:
  cx, cy, w, h, objectness, class scores) and YOLOv8/v11 ([1, 4 + C, N]: no objectness, channels
  first). Which one is read from the shape and the number of classes; ``objectness`` overrides.
  A YOLOX head exported without its decode gives grid offsets: ``strides`` decodes them.
  Candidates over the score threshold go through class-aware NMS.
- ``ssd``: separate outputs, boxes [1, N, 4], scores [1, N] (or [1, N, C], then NMS here),
  classes [1, N] and optionally a count [1], as the TF object-detection API and torchvision's
  SSD export them; the outputs are found by name (box, score, class/label, num/count) or shape.

Boxes are given in input pixels (``normalized: true`` scales [0, 1] coordinates by the input
size; ``auto`` decides from the values) and mapped back through the letterbox or resize to the
original image (``agent.tasks.preprocess.to_original``). The metric, COCO mAP, is computed on the
controller by pycocotools from the predictions this returns (``controller.data.scoring``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from agent.metrics import Evaluator
from agent.tasks.base import PredictionsEvaluator, Task, register
from agent.tasks.preprocess import to_original

Decoded = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4] xyxy, scores [K], classes [K]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    area = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    keep = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
        h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
        inter = w * h
        union = area[i] + area[rest] - inter
        order = rest[inter <= iou * np.maximum(union, 1e-12)]
    return np.asarray(keep, dtype=np.int64)


def class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other)."""
    if not scores.size:
        return np.zeros(0, dtype=np.int64)
    offset = (classes.astype(np.float64) * (float(np.abs(boxes).max()) + 1.0))[:, None]
    return nms(boxes + offset, scores, iou)[:limit]


def _xyxy(boxes: np.ndarray, form: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if form == "cxcywh":
        return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    if form == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if form == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
    return b


def _to_pixels(boxes: np.ndarray, normalized: Any, size: Tuple[int, int]) -> np.ndarray:
    if normalized == "auto":
        normalized = bool(boxes.size) and float(np.abs(boxes).max()) <= 1.5
    return boxes * np.array([size[0], size[1], size[0], size[1]], dtype=np.float64) if normalized else boxes


def decode_yolo(outputs: List[np.ndarray], params: Dict[str, Any]) -> Decoded:
    raw = np.asarray(outputs[0], dtype=np.float64)
    out = raw.reshape((raw.shape[-2], raw.shape[-1]) if raw.ndim >= 2 else (1, -1))
    rows, cols = int(out.shape[0]), int(out.shape[1])
    n_classes = len(params.get("classes") or []) or None
    # Rows are candidates unless the class count (or, without it, the shape) says channels first.
    if n_classes:
        channels_first = rows in (4 + n_classes, 5 + n_classes) and cols not in (4 + n_classes, 5 + n_classes)
    else:
        channels_first = rows < cols
    if channels_first:
        out, rows, cols = out.T, cols, rows
    objectness = params.get("objectness", "auto")
    if objectness == "auto":
        objectness = cols == 5 + n_classes if n_classes else not channels_first
    if cols < (6 if objectness else 5):
        raise ValueError("a yolo output needs 4 box values%s and class scores per candidate, got %d values"
                         % (", objectness" if objectness else "", cols))
    if params.get("strides"):
        out = _grid_decode(out, [int(v) for v in params["strides"]], _size(params))
    cls_scores = out[:, 5:] if objectness else out[:, 4:]
    if n_classes and cls_scores.shape[1] != n_classes:
        raise ValueError("the model scores %d classes, the dataset has %d" % (cls_scores.shape[1], n_classes))
    classes = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(len(classes)), classes] * (out[:, 4] if objectness else 1.0)
    keep = scores >= float(params.get("score", 0.25))
    boxes = _to_pixels(_xyxy(out[keep, :4], params.get("box", "cxcywh")), params.get("normalized", "auto"),
                       _size(params))
    scores, classes = scores[keep], classes[keep]
    kept = class_nms(boxes, scores, classes, float(params.get("iou", 0.45)), int(params.get("max_detections", 100)))
    return boxes[kept], scores[kept], classes[kept]


def _grid_decode(out: np.ndarray, strides: List[int], size: Tuple[int, int]) -> np.ndarray:
    """A raw YOLOX-style head (no decode in the graph): candidates in row-major grid order per
    stride; centre = (xy + cell) * stride, size = exp(wh) * stride, in input pixels."""
    cells, scale = [], []
    for stride in strides:
        nx, ny = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(nx), np.arange(ny))
        cells.append(np.stack([xv, yv], axis=2).reshape(-1, 2))
        scale.append(np.full((nx * ny, 1), float(stride)))
    grid, stride_col = np.concatenate(cells), np.concatenate(scale)
    if grid.shape[0] != out.shape[0]:
        raise ValueError("strides %s on a %dx%d input make %d candidates, the model gives %d"
                         % (strides, size[0], size[1], grid.shape[0], out.shape[0]))
    out = out.copy()
    out[:, :2] = (out[:, :2] + grid) * stride_col
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride_col
    return out


def _ssd_outputs(outputs: List[np.ndarray], params: Dict[str, Any]) -> Dict[str, Optional[np.ndarray]]:
    """boxes, scores, classes, count: by the declared or recognised output names, else by shape."""
    outputs = [np.asarray(o) for o in outputs]  # matched by identity below: one array object each
    names = [str(n).lower() for n in params.get("output_names") or []]
    found: Dict[str, Optional[np.ndarray]] = {"boxes": None, "scores": None, "classes": None, "count": None}
    words = {"boxes": ("box",), "scores": ("score", "conf"), "classes": ("class", "label"), "count": ("num", "count")}
    declared = params.get("outputs") or {}
    for role in found:
        if role in declared:
            idx = names.index(str(declared[role]).lower()) if str(declared[role]).lower() in names else int(declared[role])
            found[role] = np.asarray(outputs[idx])
        elif len(names) == len(outputs):
            for name, value in zip(names, outputs):
                if any(w in name for w in words[role]) and not any(found[r] is value for r in found):
                    found[role] = np.asarray(value)
                    break
    rest = [np.asarray(o) for o in outputs if not any(found[r] is o for r in found)]
    for o in list(rest):  # what names did not settle: by shape
        if found["boxes"] is None and o.shape[-1:] == (4,) and o.ndim >= 2:
            found["boxes"] = o
        elif found["count"] is None and o.size == 1 and o.ndim <= 1:  # scores [1, 1] is one detection
            found["count"] = o
        elif found["scores"] is None:
            found["scores"] = o
        elif found["classes"] is None:
            found["classes"] = o
    if found["boxes"] is None or found["scores"] is None:
        raise ValueError("an ssd model needs a boxes output [1, N, 4] and a scores output; outputs: %s"
                         % ", ".join(str(list(np.shape(o))) for o in outputs))
    return found


def decode_ssd(outputs: List[np.ndarray], params: Dict[str, Any]) -> Decoded:
    o = _ssd_outputs(outputs, params)
    boxes = np.asarray(o["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(o["scores"], dtype=np.float64)
    if scores.ndim >= 2 and scores.shape[-1] > 1 and scores.size != boxes.shape[0]:
        scores = scores.reshape(boxes.shape[0], -1)  # per-class scores: best class, NMS here
        classes = scores.argmax(axis=1)
        scores = scores[np.arange(len(classes)), classes]
        run_nms = True
    else:
        scores = scores.reshape(-1)
        if o["classes"] is None:
            raise ValueError("an ssd model with one score per box needs a classes output")
        classes = np.asarray(o["classes"]).reshape(-1).astype(np.int64)
        run_nms = bool(params.get("nms", False))
    classes = classes - int(params.get("class_offset", 0))
    n = boxes.shape[0]
    if o["count"] is not None:
        n = min(n, int(np.asarray(o["count"]).reshape(-1)[0]))
    boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    keep = (scores >= float(params.get("score", 0.25))) & (classes >= 0)
    boxes = _to_pixels(_xyxy(boxes[keep], params.get("box", "yxyx")), params.get("normalized", "auto"), _size(params))
    scores, classes = scores[keep], classes[keep]
    limit = int(params.get("max_detections", 100))
    kept = (class_nms(boxes, scores, classes, float(params.get("iou", 0.45)), limit) if run_nms
            else np.argsort(-scores, kind="stable")[:limit])
    return boxes[kept], scores[kept], classes[kept]


DECODERS = {"yolo": decode_yolo, "ssd": decode_ssd}


def _size(params: Dict[str, Any]) -> Tuple[int, int]:
    w, h = params.get("input_size") or (1, 1)
    return int(w), int(h)


@register
class Detection(Task):
    name = "detection"

    @property
    def metric(self) -> str:  # type: ignore[override]
        return str(self.params.get("metric", "mAP50"))

    def detect(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Decoded:
        """Boxes in original image pixels (given the sample's ``geometry`` and ``size``), scores, classes."""
        decoder = str(self.params.get("decoder", "yolo"))
        if decoder not in DECODERS:
            raise ValueError("unknown detection decoder %r; known: %s" % (decoder, ", ".join(sorted(DECODERS))))
        boxes, scores, classes = DECODERS[decoder](outputs, self.params)
        if "geometry" in sample:
            size = sample.get("size")
            w, h = (1 << 30, 1 << 30) if size is None else size
            boxes = to_original(boxes, sample["geometry"], int(w), int(h))
        return boxes, scores, classes

    def postprocess(self, outputs: List[np.ndarray], sample: Dict[str, Any]) -> Dict[str, Any]:
        """``{"objects": [{"label", "score", "box": [x1, y1, x2, y2]}]}`` in original image pixels."""
        boxes, scores, classes = self.detect(outputs, sample)
        names = self.params.get("classes") or []
        return {"objects": [{"label": names[c] if c < len(names) else str(c), "score": float(s),
                             "box": [round(float(v), 2) for v in b]}
                            for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())]}

    def evaluator(self, labels: Dict[str, np.ndarray]) -> Evaluator:
        geometry = self.need(labels, "geometry")
        size = self.need(labels, "image_size")

        def predict(index: int, outputs: List[np.ndarray]) -> List[List[float]]:
            boxes, scores, classes = self.detect(outputs, {"geometry": geometry[index], "size": size[index]})
            return [[round(float(v), 3) for v in b] + [round(float(s), 5), int(c)]
                    for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())]

        return PredictionsEvaluator(self.metric, predict)

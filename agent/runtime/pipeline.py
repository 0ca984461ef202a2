"""The OCR pipeline: a page image in, its text lines out, as PaddleOCR's own system runs its models.

1. the detector (ocr-det) finds text boxes on the page, mapped back to the page's pixels;
2. each box is cut from the ORIGINAL page (not the detector's resized input: full resolution for
   the recognizer), turned upright when it is much taller than wide (vertical text);
3. the direction classifier (ocr-cls, optional) says whether a line is upside down; it is turned
   180 degrees when it says "180" with a score of at least ``cls_thresh`` (PaddleOCR's 0.9);
4. the recognizer (ocr-rec) reads each line (CTC decode with the bundle's charset);
5. lines without text, or read with a score under ``drop_score`` (PaddleOCR's 0.5: noise the
   detector took for text), are dropped; the rest come in reading order: top to bottom, lines
   whose vertical centres are within half a line height forming one row, read left to right.

The crops of a page go through the classifier and the recognizer together, batched where their
batch dimension is dynamic.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from agent.runtime.model import STAGES, LoadedModel, elapsed_ms, new_timing

CLS_THRESH = 0.9
DROP_SCORE = 0.5
# A crop this much taller than wide is vertical text: turned a quarter, as PaddleOCR does.
VERTICAL_RATIO = 1.5


def crop(page: np.ndarray, box: Sequence[Sequence[float]]) -> Optional[np.ndarray]:
    """The page's pixels inside a box (four corners, axis-aligned), upright; None when too small."""
    xs = [float(p[0]) for p in box]
    ys = [float(p[1]) for p in box]
    h, w = page.shape[:2]
    x0, x1 = max(0, int(np.floor(min(xs)))), min(w, int(np.ceil(max(xs))))
    y0, y1 = max(0, int(np.floor(min(ys)))), min(h, int(np.ceil(max(ys))))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    out = page[y0:y1, x0:x1]
    if (y1 - y0) >= VERTICAL_RATIO * (x1 - x0):
        out = np.rot90(out)
    return np.ascontiguousarray(out)


def reading_order(lines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Lines (with a 4-corner "box") top to bottom; a line whose vertical centre is within half a
    line height of a row's first line joins that row; each row left to right."""
    def span(line: Dict[str, Any]) -> tuple:
        ys = [p[1] for p in line["box"]]
        xs = [p[0] for p in line["box"]]
        return (min(ys) + max(ys)) / 2.0, max(ys) - min(ys), min(xs)

    rows: List[List[Dict[str, Any]]] = []
    anchor = (0.0, 0.0)  # the centre and height of the current row's first line
    for line in sorted(lines, key=lambda ln: span(ln)[0]):
        cy, h, _ = span(line)
        if rows and abs(cy - anchor[0]) <= 0.5 * min(h, anchor[1]):
            rows[-1].append(line)
        else:
            rows.append([line])
            anchor = (cy, h)
    return [ln for row in rows for ln in sorted(row, key=lambda ln: span(ln)[2])]


class OcrPipeline:
    """Detector + optional direction classifier + recognizer of one bundle."""

    def __init__(self, det: LoadedModel, rec: LoadedModel, cls: Optional[LoadedModel] = None) -> None:
        self.det, self.rec, self.cls = det, rec, cls
        params = det.spec.get("task_params") or {}
        self.cls_thresh = float(((cls.spec.get("task_params") or {}) if cls else {}).get("cls_thresh", CLS_THRESH))
        self.drop_score = float((rec.spec.get("task_params") or {}).get("drop_score", params.get("drop_score",
                                                                                                   DROP_SCORE)))

    @property
    def models(self) -> List[LoadedModel]:
        return [m for m in (self.det, self.cls, self.rec) if m is not None]

    def run(self, pages: List[np.ndarray]) -> List[Dict[str, Any]]:
        """Decoded pages -> {"lines": [...], "timing_ms": {stages..., "models": {name: {stage: ms}}}}."""
        found = self.det.run_images(pages)  # pages of one size batch through the detector
        return [self._page(page, det) for page, det in zip(pages, found)]

    def _page(self, page: np.ndarray, det: Dict[str, Any]) -> Dict[str, Any]:
        per_model = {self.det.name: det.pop("timing_ms")}
        start = time.perf_counter()
        boxes, crops = [], []
        for box in det["boxes"]:
            piece = crop(page, box)
            if piece is not None:
                boxes.append(box)
                crops.append(piece)
        cropping = elapsed_ms(start)
        if crops and self.cls is not None:
            directions = self.cls.run_images(crops)
            per_model[self.cls.name] = _sum([d.pop("timing_ms") for d in directions])
            start = time.perf_counter()
            for k, d in enumerate(directions):
                if d.get("label") == "180" and float(d.get("score", 0.0)) >= self.cls_thresh:
                    crops[k] = np.ascontiguousarray(crops[k][::-1, ::-1])
            per_model[self.cls.name]["postprocess"] += elapsed_ms(start)
        lines: List[Dict[str, Any]] = []
        if crops:
            texts = self.rec.run_images(crops)
            per_model[self.rec.name] = _sum([t.pop("timing_ms") for t in texts])
            start = time.perf_counter()
            for box, t in zip(boxes, texts):
                text, score = str(t.get("text", "")).strip(), float(t.get("score", 0.0))
                if text and score >= self.drop_score:
                    lines.append({"text": text, "score": round(score, 5), "box": box})
            lines = reading_order(lines)
            per_model[self.rec.name]["postprocess"] += elapsed_ms(start)
        timing = _sum(list(per_model.values()))
        timing["preprocess"] += cropping
        timing["models"] = {name: {k: round(v, 3) for k, v in t.items()} for name, t in per_model.items()}
        return {"lines": lines, "timing_ms": timing}


def _sum(timings: List[Dict[str, Any]]) -> Dict[str, Any]:
    out = new_timing()
    for t in timings:
        for k in STAGES:
            out[k] += float(t.get(k, 0.0))
    return out

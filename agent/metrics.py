"""Task metrics computed on the board from a model's outputs and the dataset's labels.

Standard library + numpy only, Python >= 3.8. The tasks (``agent.tasks``) pick their evaluator;
the accuracy loop feeds it one sample at a time (batch 1, outputs in the model's output order)
and asks for ``result()`` at the end. The OCR tasks' and the raw task's evaluators live here:

- det: DB post-processing (PaddleOCR's thresholds from the dataset params), greedy one-to-one
  matching at IoU >= 0.5 -> precision, recall, "hmean";
- rec: CTC greedy decoding -> "exact_match", char_accuracy;
- cls: top-1 "accuracy";
- agreement: per output, top-1 agreement (classifier-like [1, C]) or cosine similarity with the
  fp32 reference outputs -> "agreement" (their mean), max abs difference.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

Box = Tuple[float, float, float, float]


class Evaluator(abc.ABC):
    """Accumulates per-sample outputs; ``result()`` gives the protocol's accuracy object."""

    metric = ""

    def __init__(self) -> None:
        self.seen = set()  # type: set

    def add(self, index: int, outputs: List[np.ndarray]) -> None:
        if index in self.seen:
            raise ValueError("sample %d evaluated twice" % index)
        self.seen.add(index)
        self._add(int(index), [np.asarray(o) for o in outputs])

    @abc.abstractmethod
    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        """Fold one sample's outputs into the running figures."""

    @abc.abstractmethod
    def _metrics(self) -> Dict[str, Any]:
        """Every figure of the task, the primary metric among them."""

    def result(self) -> Dict[str, Any]:
        metrics = self._metrics()
        return {"metric": self.metric, "value": float(metrics[self.metric]),
                "samples": len(self.seen), "metrics": metrics}


# --- det -------------------------------------------------------------------------------------


def components(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a 2-D bool mask, by row runs and union-find.

    Returns the runs (row, start, end exclusive) and each run's component id 0..n-1: a
    640x640 map has a few thousand runs, so only the run merging loops in Python.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
    srow, start = np.nonzero(edges == 1)
    _, end = np.nonzero(edges == -1)  # row-major order pairs starts with their ends
    row = srow
    n = row.size
    parent = np.arange(n)
    if n:
        # Runs in the next row touching run a (8-connectivity): b.end >= a.start and
        # b.start <= a.end, found by binary search on row-major keys.
        stride = w + 2
        key_start = row * stride + start
        key_end = row * stride + end
        lo = np.searchsorted(key_end, (row + 1) * stride + start, side="left")
        hi = np.searchsorted(key_start, (row + 1) * stride + end, side="right")
        counts = np.maximum(hi - lo, 0)
        a = np.repeat(np.arange(n), counts)
        b = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        par = parent.tolist()

        def find(x: int) -> int:
            while par[x] != x:
                par[x] = par[par[x]]
                x = par[x]
            return x

        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                par[max(rx, ry)] = min(rx, ry)
        parent = np.array([find(x) for x in range(n)], dtype=np.int64)
    _, label = np.unique(parent, return_inverse=True)
    return row, start, end, label.reshape(-1)


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.6,
             unclip_ratio: float = 1.5, min_size: float = 3) -> List[Box]:
    """Text boxes (x0, y0, x1, y1) from a DB probability map [H, W], axis-aligned.

    PaddleOCR's DBPostProcess on boxes instead of contours: binarize, one box per component,
    score = mean probability of the component, unclip by area * ratio / perimeter.
    """
    h, w = prob.shape
    row, start, end, label = components(prob > thresh)
    if not row.size:
        return []
    m = int(label.max()) + 1
    csum = np.zeros((h, w + 1))
    np.cumsum(prob, axis=1, out=csum[:, 1:])
    total = np.bincount(label, weights=csum[row, end] - csum[row, start], minlength=m)
    area = np.bincount(label, weights=end - start, minlength=m)
    x0 = np.full(m, w)
    y0 = np.full(m, h)
    x1 = np.zeros(m, dtype=np.int64)
    y1 = np.zeros(m, dtype=np.int64)
    np.minimum.at(x0, label, start)
    np.minimum.at(y0, label, row)
    np.maximum.at(x1, label, end)
    np.maximum.at(y1, label, row + 1)
    boxes = []  # type: List[Box]
    for k in range(m):
        bw, bh = float(x1[k] - x0[k]), float(y1[k] - y0[k])
        if min(bw, bh) < min_size or total[k] / area[k] < box_thresh:
            continue
        d = bw * bh * unclip_ratio / (2.0 * (bw + bh))
        box = (max(0.0, x0[k] - d), max(0.0, y0[k] - d), min(float(w), x1[k] + d), min(float(h), y1[k] + d))
        # PaddleOCR drops boxes under min_size + 2 after unclipping too.
        if min(box[2] - box[0], box[3] - box[1]) >= min_size + 2:
            boxes.append(box)
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(pred: Sequence[Sequence[float]], truth: Sequence[Sequence[float]], threshold: float = 0.5) -> int:
    """Greedy one-to-one matching, best IoU first; returns the number of matches >= threshold."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t = set(), set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


class DetEvaluator(Evaluator):
    metric = "hmean"

    def __init__(self, boxes: np.ndarray, params: Dict[str, Any]) -> None:
        super().__init__()
        self.truth = {}  # type: Dict[int, List[List[float]]]
        for rec in np.asarray(boxes, dtype=np.float64).reshape(-1, 5).tolist():
            self.truth.setdefault(int(rec[0]), []).append(rec[1:])
        keys = ("thresh", "box_thresh", "unclip_ratio", "min_size")
        self.post = {k: float(params[k]) for k in keys if k in params}
        self.iou = float(params.get("iou", 0.5))
        self.tp = self.n_pred = self.n_truth = 0

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        prob = outputs[0]
        prob = prob.reshape(prob.shape[-2:]).astype(np.float64)  # [1, 1, H, W] -> [H, W]
        pred = db_boxes(prob, **self.post)
        truth = self.truth.get(index, [])
        self.tp += match(pred, truth, self.iou)
        self.n_pred += len(pred)
        self.n_truth += len(truth)

    def _metrics(self) -> Dict[str, Any]:
        p = self.tp / self.n_pred if self.n_pred else 0.0
        r = self.tp / self.n_truth if self.n_truth else 0.0
        return {"hmean": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r,
                "true_positives": self.tp, "predicted": self.n_pred, "ground_truth": self.n_truth}


# --- rec -------------------------------------------------------------------------------------


def ctc_greedy_decode(probs: np.ndarray, charset: Sequence[str]) -> str:
    """Best path of a CTC output [T, C]: argmax per step, merge repeats, drop blanks (index 0)."""
    best = np.asarray(probs).reshape(-1, np.asarray(probs).shape[-1]).argmax(axis=1)
    keep = np.ones(best.size, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0
    # Classes beyond the charset (a model with more classes than labels) decode to nothing.
    return "".join(charset[i - 1] for i in best[keep].tolist() if i <= len(charset))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class RecEvaluator(Evaluator):
    metric = "exact_match"

    def __init__(self, text: np.ndarray, charset: np.ndarray) -> None:
        super().__init__()
        self.text = [str(t) for t in np.asarray(text).tolist()]
        self.charset = [str(c) for c in np.asarray(charset).tolist()]
        self.exact = self.distance = self.length = 0

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        pred = ctc_greedy_decode(outputs[0], self.charset).strip()
        truth = self.text[index]
        self.exact += pred == truth
        self.distance += edit_distance(pred, truth)
        self.length += max(len(pred), len(truth))

    def _metrics(self) -> Dict[str, Any]:
        n = len(self.seen)
        return {"exact_match": self.exact / n if n else 0.0,
                "char_accuracy": 1.0 - self.distance / self.length if self.length else 1.0,
                "edit_distance": self.distance}


# --- cls -------------------------------------------------------------------------------------


class ClsEvaluator(Evaluator):
    metric = "accuracy"

    def __init__(self, label: np.ndarray) -> None:
        super().__init__()
        self.label = np.asarray(label, dtype=np.int64).reshape(-1)
        self.correct = 0
        self.per_class = {}  # type: Dict[int, List[int]]

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        truth = int(self.label[index])
        hit = int(outputs[0].reshape(-1).argmax()) == truth
        self.correct += hit
        counts = self.per_class.setdefault(truth, [0, 0])
        counts[0] += hit
        counts[1] += 1

    def _metrics(self) -> Dict[str, Any]:
        n = len(self.seen)
        out = {"accuracy": self.correct / n if n else 0.0}  # type: Dict[str, Any]
        for cls, (hit, total) in sorted(self.per_class.items()):
            out["accuracy_class_%d" % cls] = hit / total
        return out


# --- agreement -------------------------------------------------------------------------------


class AgreementEvaluator(Evaluator):
    """Agreement of every output with the fp32 reference of the same sample."""

    metric = "agreement"

    def __init__(self, references: List[np.ndarray], names: List[str]) -> None:
        super().__init__()
        if not references:
            raise ValueError("agreement dataset has no reference outputs")
        self.references = references
        self.names = names
        self.scores = [[] for _ in names]  # type: List[List[float]]
        self.max_abs = [0.0 for _ in names]

    def _add(self, index: int, outputs: List[np.ndarray]) -> None:
        if len(outputs) != len(self.references):
            raise ValueError("model gave %d outputs, the reference has %d" % (len(outputs), len(self.references)))
        for k, (out, ref) in enumerate(zip(outputs, self.references)):
            want = np.asarray(ref[index], dtype=np.float64)
            got = np.asarray(out, dtype=np.float64)
            if got.size != want.size:
                raise ValueError("output %r has %d values, its reference %d" % (self.names[k], got.size, want.size))
            if _classifier_like(want):
                score = float(got.reshape(-1).argmax() == want.reshape(-1).argmax())
            else:
                score = _cosine(got.reshape(-1), want.reshape(-1))
            self.scores[k].append(score)
            if got.size:
                self.max_abs[k] = max(self.max_abs[k], float(np.max(np.abs(got.reshape(-1) - want.reshape(-1)))))

    def _metrics(self) -> Dict[str, Any]:
        outputs = {}  # type: Dict[str, Any]
        for k, name in enumerate(self.names):
            kind = "top1" if _classifier_like(np.asarray(self.references[k][0])) else "cosine"
            mean = float(np.mean(self.scores[k])) if self.scores[k] else 0.0
            outputs[name] = {kind: mean, "max_abs_diff": self.max_abs[k]}
        means = [float(np.mean(s)) if s else 0.0 for s in self.scores]
        return {"agreement": float(np.mean(means)), "max_abs_diff": max(self.max_abs),
                "outputs": outputs}


def _classifier_like(reference: np.ndarray) -> bool:
    """[1, C] with C > 1 (one sample's output at batch 1): compared by its top-1 class."""
    return reference.ndim == 2 and reference.shape[0] == 1 and reference.shape[1] > 1


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0  # two zero outputs agree; one zero output does not
    return float(np.dot(a, b) / (na * nb))

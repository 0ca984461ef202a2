"""Scores that need the controller: a task whose board returns predictions (``agent.tasks``,
a ``PredictionsEvaluator``) is scored here, against the dataset file's labels.

- detection: COCO mAP by pycocotools' own COCOeval, on the original images' ids, categories,
  areas and crowd flags, so the figures are the library's, never a re-implementation;
- a user's own task: the module's ``metric(predictions, labels)``.

``score`` turns an accuracy block with ``predictions`` into the usual one (metric, value, samples,
metrics) and drops the predictions: the database keeps figures, not every box.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np


def needs_scoring(accuracy: Any) -> bool:
    return isinstance(accuracy, dict) and "predictions" in accuracy


def score(accuracy: dict[str, Any], dataset: Path, module: Path | None = None) -> dict[str, Any]:
    """The accuracy block with its figures computed from its predictions (a ValueError says why not)."""
    task, count, params, labels = _labels(dataset)
    predictions = accuracy["predictions"]
    if not isinstance(predictions, list) or len(predictions) != count:
        raise ValueError(f"the board returned {len(predictions) if isinstance(predictions, list) else 'no'} "
                         f"predictions for {count} samples")
    if task == "detection":
        metrics = coco_map(labels, predictions, params)
        metric = str(params.get("metric", "mAP50"))
    elif task == "custom":
        if module is None:
            raise ValueError("a custom task is scored by its module, and none was given")
        from agent.tasks.custom import load_module

        mod = load_module(str(module))
        texts = [str(t) for t in labels["label_text"].tolist()]
        metrics = {str(k): float(v) for k, v in dict(mod.metric(predictions, texts)).items()}
        metric = str(mod.METRIC)
        if metric not in metrics:
            raise ValueError(f"the task module's metric() gave {sorted(metrics)}, not its METRIC {metric!r}")
    else:
        raise ValueError(f"task {task} is scored on the board")
    return {"metric": metric, "value": float(metrics[metric]), "samples": count, "metrics": metrics}


def _labels(dataset: Path) -> tuple[str, int, dict[str, Any], dict[str, np.ndarray]]:
    """A dataset file's task, count, parameters and labels; its images stay compressed, unread
    (scoring runs once per job, and the images are most of the file)."""
    from agent.protocol import INPUT_PREFIX, META_KEY

    with np.load(dataset, allow_pickle=False) as npz:
        meta = json.loads(str(npz[META_KEY]))
        labels = {k: npz[k] for k in npz.files if k != META_KEY and not k.startswith(INPUT_PREFIX)}
    return str(meta.get("task")), int(meta["count"]), dict(meta.get("params") or {}), labels


def coco_map(labels: dict[str, np.ndarray], predictions: list[Any], params: dict[str, Any]) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (and COCOeval's other stats) of per-sample detections
    ``[x0, y0, x1, y1, score, class]`` in original pixels, against the dataset's ground truth."""
    image_ids = [int(i) for i in labels["image_id"].tolist()]
    category_ids = [int(c) for c in labels["category_id"].tolist()]
    sizes = labels["image_size"].tolist()
    gt: dict[str, Any] = {
        "images": [{"id": i, "width": int(w), "height": int(h)} for i, (w, h) in zip(image_ids, sizes)],
        "categories": [{"id": c} for c in category_ids],
        "annotations": [],
    }
    for n, (row, crowd, area) in enumerate(zip(labels["boxes"].tolist(), labels["iscrowd"].tolist(),
                                               labels["area"].tolist()), start=1):
        k, x0, y0, x1, y1, c = row
        gt["annotations"].append({"id": n, "image_id": image_ids[int(k)], "category_id": category_ids[int(c)],
                                  "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": int(crowd)})
    results = []
    for k, dets in enumerate(predictions):
        for x0, y0, x1, y1, s, c in dets:
            if not 0 <= int(c) < len(category_ids):
                raise ValueError(f"a detection names class {int(c)}; the dataset has {len(category_ids)}")
            results.append({"image_id": image_ids[k], "category_id": category_ids[int(c)],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    return evaluate(gt, results)


def evaluate(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCOeval (bbox) of ``results`` against the ground truth ``gt``; its 12 stats, by name."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        if not results:
            return {"mAP50-95": 0.0, "mAP50": 0.0}
        found = truth.loadRes(results)
        ev = COCOeval(truth, found, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval says -1 where there is nothing to measure (no small objects, say): left out.
    out = {name: float(v) for name, v in zip(STATS, ev.stats) if v >= 0}
    return {"mAP50-95": 0.0, "mAP50": 0.0, **out}


STATS = ("mAP50-95", "mAP50", "mAP75", "mAP50-95_small", "mAP50-95_medium", "mAP50-95_large",
         "AR1", "AR10", "AR100", "AR100_small", "AR100_medium", "AR100_large")

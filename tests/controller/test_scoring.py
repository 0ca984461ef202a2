"""Detection scored on the controller agrees with pycocotools run by hand on the user's own files.

A small COCO ground truth is written as a user would (categories with ids 7 and 3, in that
order; an image with no annotation; a crowd region; areas that are not the box's w*h; small,
medium and large objects), read and written as a dataset file through the real path
(``imagesets.read`` then ``imagesets.write_split`` with a letterbox declaration), and a set of
predictions in original pixels is scored by ``controller.data.scoring.score``. The reference is
COCOeval run directly on the original JSON file and a results JSON file (``COCO.loadRes``): every
one of its twelve stats must come out the same, to 1e-9.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from controller.config.task import PreprocessSpec
from controller.data import imagesets
from controller.data.scoring import score

# COCOeval.summarize's order (pycocotools' own docs): what each stat of ev.stats is.
COCO_STATS = ("mAP50-95", "mAP50", "mAP75", "mAP50-95_small", "mAP50-95_medium", "mAP50-95_large",
              "AR1", "AR10", "AR100", "AR100_small", "AR100_medium", "AR100_large")

IMAGES = [  # id, file, width, height: ids neither contiguous nor sorted
    (11, "a.png", 200, 150),
    (5, "b.png", 160, 120),
    (42, "c.png", 120, 200),
    (8, "d.png", 120, 120),
    (19, "e.png", 64, 48),  # no annotation: only false positives can land here
]
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]  # the file's order is not the id order

ANNOTATIONS = [  # image, category, [x, y, w, h], area (a segmentation's, not w*h), crowd
    (11, 3, [10.5, 12.25, 120.0, 100.0], 9000.0, 0),  # box 12000 (large), area medium
    (11, 7, [150.0, 20.0, 25.5, 30.0], 600.0, 0),  # small
    (11, 7, [5.0, 115.0, 60.0, 30.0], 1500.0, 0),  # medium
    (5, 3, [20.0, 20.0, 50.0, 40.0], 1800.0, 0),
    (5, 3, [0.0, 0.0, 160.0, 120.0], 15000.0, 1),  # a crowd: a detection in it is neither right nor wrong
    (42, 7, [30.2, 40.7, 15.0, 18.0], 200.0, 0),
    (42, 3, [10.0, 100.0, 100.0, 90.0], 8000.0, 0),
    (42, 7, [60.0, 150.0, 40.0, 40.0], 1600.0, 0),  # missed by every prediction
    (8, 3, [5.0, 5.0, 110.0, 110.0], 12100.0, 0),  # large
]

PREDICTIONS = {  # per file: [x0, y0, x1, y1, score, category id] in original pixels
    "a.png": [[12, 14, 128, 110, 0.9, 3], [151, 21, 176, 50, 0.8, 7], [80, 60, 110, 90, 0.85, 7],
              [8, 112, 60, 140, 0.4, 7]],
    "b.png": [[22, 18, 70, 62, 0.7, 3], [100, 60, 150, 110, 0.95, 3], [0, 0, 20, 20, 0.3, 7]],
    "c.png": [[30, 41, 45, 58, 0.6, 7], [12, 98, 108, 185, 0.88, 3], [15, 100, 110, 190, 0.5, 3]],
    "d.png": [[6, 4, 112, 113, 0.75, 3], [10, 10, 50, 50, 0.65, 3]],
    "e.png": [[1.5, 2.5, 30.25, 40.75, 0.55, 7]],
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's COCO file, its images beside it in images/."""
    from PIL import Image

    d = tmp_path_factory.mktemp("coco")
    (d / "images").mkdir()
    for n, (_, name, w, h) in enumerate(IMAGES):
        Image.new("RGB", (w, h), (30 * n, 200 - 30 * n, 90)).save(d / "images" / name)
    doc = {
        "images": [{"id": i, "file_name": name, "width": w, "height": h} for i, name, w, h in IMAGES],
        "annotations": [{"id": n, "image_id": i, "category_id": c, "bbox": box, "area": area, "iscrowd": crowd}
                        for n, (i, c, box, area, crowd) in enumerate(ANNOTATIONS, start=1)],
        "categories": CATEGORIES,
    }
    (d / "annotations.json").write_text(json.dumps(doc))
    return d / "annotations.json"


def _dataset(coco: Path, out: Path, metric: str = "mAP50") -> tuple[Path, imagesets.ImageSet]:
    """The dataset file a run makes of the user's COCO file: every image, letterboxed."""
    data = imagesets.read(coco, "detection")
    decl = PreprocessSpec(letterbox=64, scale=1).model_dump(mode="json")
    params = {"classes": data.classes, "metric": metric}
    imagesets.write_split(data, list(range(len(data.files))), decl, "images", params, out, {"kind": "files"})
    return out, data


def _predictions(data: imagesets.ImageSet) -> list[list[list[float]]]:
    """PREDICTIONS in the dataset's sample order, each with the model's class index for its category."""
    index = {cid: k for k, cid in enumerate(data.category_ids)}
    return [[[*d[:5], index[d[5]]] for d in PREDICTIONS[f.name]] for f in data.files]


def _cocoeval(coco: Path, tmp: Path) -> list[float]:
    """pycocotools by hand: the user's file, the predictions as a results file, COCOeval bbox."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {name: i for i, name, _, _ in IMAGES}
    results = [{"image_id": ids[name], "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
               for name, dets in PREDICTIONS.items() for x0, y0, x1, y1, s, c in dets]
    (tmp / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(coco))
        ev = COCOeval(truth, truth.loadRes(str(tmp / "results.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.mark.parametrize("metric", ["mAP50", "mAP50-95"])
def test_detection_map_is_cocoevals_own_on_the_original_file(coco: Path, tmp_path: Path, metric: str) -> None:
    dataset, data = _dataset(coco, tmp_path / "eval.npz", metric)
    assert data.category_ids == [3, 7] and data.classes == ["dog", "cat"]  # class index k is the k-th id
    scored = score({"predictions": _predictions(data)}, dataset)
    expected = dict(zip(COCO_STATS, _cocoeval(coco, tmp_path)))

    assert set(scored) == {"metric", "value", "samples", "metrics"}  # the predictions are not kept
    assert scored["samples"] == len(IMAGES) and scored["metric"] == metric
    assert scored["value"] == pytest.approx(expected[metric], abs=1e-9)
    assert set(scored["metrics"]) == {k for k, v in expected.items() if v >= 0}  # COCOeval's -1: not measured
    for name, want in expected.items():
        if want >= 0:
            assert scored["metrics"][name] == pytest.approx(want, abs=1e-9), name
    # Not a degenerate agreement: some right, some wrong, every area range present.
    assert 0 < expected["mAP50"] < 1 and 0 < expected["mAP50-95"] < expected["mAP50"]
    assert all(expected[k] >= 0 for k in ("mAP50-95_small", "mAP50-95_medium", "mAP50-95_large"))


def test_the_crowd_region_and_the_areas_are_the_users(coco: Path, tmp_path: Path) -> None:
    """Dropping the crowd flag or the file's areas changes COCOeval's answer, so the agreement
    above depends on the dataset file carrying both."""
    from agent.dataset import load_dataset
    from controller.data.scoring import coco_map

    dataset, data = _dataset(coco, tmp_path / "eval.npz")
    labels = load_dataset(str(dataset)).labels
    assert labels["iscrowd"].tolist() == [a[4] for a in ANNOTATIONS]
    assert labels["area"].tolist() == [a[3] for a in ANNOTATIONS]
    preds = _predictions(data)
    real = coco_map(labels, preds, {})
    no_crowd = coco_map({**labels, "iscrowd": labels["iscrowd"] * 0}, preds, {})
    box_areas = coco_map({**labels, "area": (labels["boxes"][:, 3] - labels["boxes"][:, 1])
                          * (labels["boxes"][:, 4] - labels["boxes"][:, 2])}, preds, {})
    assert no_crowd["mAP50"] != real["mAP50"]
    assert box_areas["mAP50-95_medium"] != real["mAP50-95_medium"]


def test_no_detections_score_zero(coco: Path, tmp_path: Path) -> None:
    dataset, data = _dataset(coco, tmp_path / "eval.npz")
    scored = score({"predictions": [[] for _ in data.files]}, dataset)
    assert scored["value"] == 0.0 and scored["metrics"]["mAP50"] == 0.0 and scored["metrics"]["mAP50-95"] == 0.0


@pytest.mark.parametrize("bad_class", [2, -1])
def test_a_detection_of_an_unknown_class_is_refused(coco: Path, tmp_path: Path, bad_class: int) -> None:
    dataset, data = _dataset(coco, tmp_path / "eval.npz")
    preds: list[Any] = _predictions(data)
    preds[1] = [*preds[1], [1, 1, 10, 10, 0.5, bad_class]]
    with pytest.raises(ValueError, match=f"class {bad_class}; the dataset has 2"):
        score({"predictions": preds}, dataset)


@pytest.mark.parametrize("count", [4, 6, 0])
def test_predictions_for_another_number_of_samples_are_refused(coco: Path, tmp_path: Path, count: int) -> None:
    dataset, data = _dataset(coco, tmp_path / "eval.npz")
    preds = (_predictions(data) * 2)[:count]
    with pytest.raises(ValueError, match=f"returned {count} predictions for 5 samples"):
        score({"predictions": preds}, dataset)


def test_predictions_that_are_not_a_list_are_refused(coco: Path, tmp_path: Path) -> None:
    dataset, _ = _dataset(coco, tmp_path / "eval.npz")
    with pytest.raises(ValueError, match="returned no predictions for 5 samples"):
        score({"predictions": None}, dataset)

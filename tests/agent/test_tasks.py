"""The tasks' pre- and postprocessing on real models' real outputs (agent/tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.metrics import iou
from agent.tasks import evaluator_for, get_task
from agent.tasks.detection import class_nms, decode_yolo, nms
from agent.tasks.preprocess import decode_image, geometry, to_original, to_tensor
from controller.data import composed
from tests.models import character_detector, orientation_model, ssd_style_detector

ORIENTATION = {"resize_short": 256, "crop": [224, 224], "interpolation": "lanczos", "color": "bgr",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LETTERBOX = {"letterbox": [416, 416], "scale": 1.0, "color": "bgr"}
YOLO = {"decoder": "yolo", "strides": [8, 16, 32], "input_size": [416, 416], "classes": ["character"], "score": 0.1}


@pytest.fixture(scope="module")
def characters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = composed.characters_coco(tmp_path_factory.mktemp("chars"), 12, seed=1)
    return path.parent, json.loads(path.read_text())


def _session(model: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _truth(doc: dict, image_id: int) -> list[list[float]]:
    return [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in doc["annotations"] if a["image_id"] == image_id]


def test_yolo_decoder_finds_the_composed_characters_in_original_pixels(characters: tuple[Path, dict]) -> None:
    folder, doc = characters
    session, task = _session(character_detector()), get_task("detection", YOLO)
    found = total = 0
    for im in doc["images"]:
        x, geo = geometry(decode_image(str(folder / "images" / im["file_name"])), LETTERBOX)
        outputs = session.run(None, {"images": to_tensor(x[None], LETTERBOX)})
        pred = task.postprocess(outputs, {"geometry": geo, "size": (im["width"], im["height"])})["objects"]
        assert all(p["label"] == "character" and 0.1 <= p["score"] <= 1 for p in pred)
        assert all(0 <= b[0] <= b[2] <= im["width"] and 0 <= b[1] <= b[3] <= im["height"] for b in (p["box"] for p in pred))
        for t in _truth(doc, im["id"]):
            total += 1
            found += max((iou(p["box"], t) for p in pred), default=0) >= 0.5
    assert found / total >= 0.6, (found, total)


def test_ssd_decoder_on_the_ssd_style_export_gives_the_yolo_decoders_detections(
        characters: tuple[Path, dict], tmp_path: Path) -> None:
    folder, doc = characters
    raw, ssd = _session(character_detector()), _session(ssd_style_detector(tmp_path / "ssd.onnx"))
    names = [o.name for o in ssd.get_outputs()]
    yolo = get_task("detection", {**YOLO, "iou": 0.45})
    boxes_out = get_task("detection", {"decoder": "ssd", "box": "xyxy", "input_size": [416, 416], "score": 0.1,
                                       "classes": ["character"], "output_names": names})
    compared = 0
    for im in doc["images"]:
        x, geo = geometry(decode_image(str(folder / "images" / im["file_name"])), LETTERBOX)
        feed = {"images": to_tensor(x[None], LETTERBOX)}
        sample = {"geometry": geo, "size": (im["width"], im["height"])}
        a, sa, _ = yolo.detect(raw.run(None, feed), sample)
        b, sb, cb = boxes_out.detect(ssd.run(None, feed), sample)
        assert len(a) == len(b) and set(cb.tolist()) <= {0}
        order_a, order_b = np.argsort(-sa), np.argsort(-sb)
        np.testing.assert_allclose(sa[order_a], sb[order_b], atol=1e-4)
        np.testing.assert_allclose(a[order_a], b[order_b], atol=0.05)
        compared += len(a)
    assert compared >= 20


def test_yolo_layouts_are_told_apart_by_shape_and_class_count() -> None:
    boxes = np.array([[50, 50, 20, 20], [200, 100, 40, 30], [52, 51, 20, 20]], float)
    cls = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.8], [0.7, 0.2, 0.1]])
    params = {"classes": ["a", "b", "c"], "score": 0.25, "iou": 0.5}
    v8 = np.concatenate([boxes, cls], 1).T[None]  # [1, 4 + C, N], no objectness
    v5 = np.concatenate([boxes, np.ones((3, 1)), cls], 1)[None]  # [1, N, 5 + C]
    for out in (v8, v5):
        b, s, c = decode_yolo([out], params)
        assert sorted(c.tolist()) == [0, 2] and len(b) == 2  # the overlapping third box is suppressed
        np.testing.assert_allclose(sorted(s.tolist()), [0.8, 0.9])
    # Objectness multiplies the class score: a low one drops the candidate.
    v5[0, 1, 4] = 0.1
    assert decode_yolo([v5], params)[2].tolist() == [0]
    with pytest.raises(ValueError, match="scores 3 classes, the dataset has 2"):
        decode_yolo([v5], {"classes": ["a", "b"], "objectness": True})


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert sorted(class_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5, 10).tolist()) == [0, 2, 3]
    assert class_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5, 1).tolist() == [0]


@pytest.mark.parametrize("decl", [{"letterbox": [416, 416]}, {"resize": [300, 200]},
                                  {"resize_short": 256, "crop": [224, 224]}])
def test_geometry_maps_a_box_back_to_where_it_was_drawn(decl: dict) -> None:
    image = np.full((180, 320, 3), 255, np.uint8)
    image[40:100, 140:200] = 0  # a black square at x 140..200, y 40..100 (inside every crop)
    x, geo = geometry(image, {**decl, "interpolation": "nearest"})
    mask = x.transpose(1, 2, 0).mean(axis=2) < 60  # the square, not the letterbox's grey
    ys, xs = np.nonzero(mask)
    back = to_original(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]), geo, 320, 180)[0]
    np.testing.assert_allclose(back, [140, 40, 200, 100], atol=2.5)


def test_to_tensor_layout_colour_scale_and_dtype() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 200  # red
    chw, _ = geometry(image, {"resize": [6, 4], "color": "bgr"})
    assert chw.shape == (3, 4, 6) and chw[2].max() == 200 and chw[0].max() == 0  # red is last in BGR
    hwc, _ = geometry(image, {"resize": [6, 4], "layout": "nhwc"})
    assert hwc.shape == (4, 6, 3)
    t = to_tensor(hwc[None], {"layout": "nhwc", "mean": [0.5, 0, 0], "std": [0.5, 1, 1]})
    assert t.dtype == np.float32 and t.shape == (1, 4, 6, 3)
    np.testing.assert_allclose(t[0, 0, 0], [(200 / 255 - 0.5) / 0.5, 0, 0], rtol=1e-6)
    assert to_tensor(hwc[None], {"layout": "nhwc", "dtype": "uint8"}).dtype == np.uint8
    assert to_tensor(chw[None], {"dtype": "float16"}).dtype == np.float16


def test_classification_on_the_real_orientation_model(tmp_path: Path) -> None:
    folder = composed.orientation_folder(tmp_path / "o", 3, seed=2)
    session = _session(orientation_model())
    task = get_task("classification", {"classes": composed.ORIENTATION_LABELS, "top_k": 2})
    images, labels = [], []
    for k, angle in enumerate(composed.ORIENTATION_LABELS):
        for f in sorted((folder / angle).iterdir()):
            images.append(geometry(decode_image(str(f)), ORIENTATION)[0])
            labels.append(k)
    outputs = session.run(None, {"x": to_tensor(np.stack(images), ORIENTATION)})[0]
    top = task.postprocess([outputs[:1]], {})["top"]
    assert [t["label"] for t in top][:1] == ["0"] and len(top) == 2 and top[0]["score"] > top[1]["score"]
    ev = task.evaluator({"label": np.array(labels)})
    for i in range(len(labels)):
        ev.add(i, [outputs[i:i + 1]])
    result = ev.result()
    assert result["metric"] == "top1" and result["value"] >= 0.9 and result["metrics"]["top5"] == 1.0
    with pytest.raises(ValueError, match="gave 4 class scores, the dataset has 3"):
        get_task("classification", {"classes": ["a", "b", "c"]}).evaluator({"label": np.array([0])}).add(0, [outputs[:1]])


def test_evaluator_for_a_detection_dataset_returns_predictions(characters: tuple[Path, dict]) -> None:
    from types import SimpleNamespace

    data = SimpleNamespace(task="detection", params=YOLO, labels={"geometry": np.array([[1.0, 1.0, 0.0, 0.0]]),
                                                                  "image_size": np.array([[416, 416]])})
    ev = evaluator_for(data)
    ev.add(0, [np.zeros((1, 3549, 6), np.float32)])
    assert ev.result() == {"metric": "mAP50", "value": None, "samples": 1, "metrics": {}, "predictions": [[]]}

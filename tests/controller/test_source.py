"""Preparing the user's ONNX file: fixed shapes, upgraded opset, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.protocol import sha256_file
from controller.build.source import MIN_OPSET, prepare
from controller.errors import ModelError
from tests.models import digits_mlp, ocr_model


@pytest.mark.parametrize("which, shape", [("det", [1, 3, 640, 640]), ("rec", [1, 3, 48, 320]), ("cls", [1, 3, 48, 192])])
def test_paddleocr_models_get_fixed_shapes_and_opset_13(tmp_path: Path, which: str, shape: list[int]) -> None:
    out = tmp_path / "prepared.onnx"
    prepared = prepare(ocr_model(which), which, {"x": shape}, out)
    model = onnx.load(str(out))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", *shape[1:]]  # batch stays symbolic for throughput sweeps
    assert prepared.opset == MIN_OPSET
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == MIN_OPSET
    assert prepared.inputs[0].shape == tuple(shape)
    assert prepared.sha256 == sha256_file(out)
    # The upgraded graph computes what the original does.
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = ort.InferenceSession(str(ocr_model(which)), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fixed_shape_model_needs_no_shapes(tmp_path: Path) -> None:
    src = tmp_path / "digits.onnx"
    digits_mlp(src)
    prepared = prepare(src, "digits", {}, tmp_path / "out.onnx")
    assert prepared.inputs[0].shape == (1, 64) and prepared.inputs[0].name == "pixels"


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    cls = ocr_model("cls")
    cases = {
        "model file not found": (tmp_path / "missing.onnx", {"x": [1, 3, 48, 192]}),
        "has dynamic dims ?x3x?x?; give its shape, e.g. --input x=1x3x224x224": (cls, {}),
        "input 'image' is not in the model; its inputs are ['x']": (cls, {"image": [1, 3, 48, 192]}),
        "input 'x' has rank 4, the shape given has 3": (cls, {"x": [1, 48, 192]}),
        "input 'x' dim 1 is 3 in the model, not 1": (cls, {"x": [1, 1, 48, 192]}),
    }
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("these are my notes, not a model\n" * 20)
    cases["notes.onnx is not"] = (not_onnx, {})
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(cls.read_bytes()[: cls.stat().st_size // 2])
    cases["truncated.onnx is not a readable ONNX model"] = (truncated, {})
    for expected, (path, shapes) in cases.items():
        with pytest.raises(ModelError) as err:
            prepare(path, "model m", shapes, tmp_path / "out.onnx")
        assert expected in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_structurally_corrupt_model_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "digits.onnx"
    digits_mlp(src)
    model = onnx.load(str(src))
    model.graph.node[0].input[1] = "no_such_weight"  # a dangling edge: parses, but is not a graph
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ModelError, match="is a corrupt ONNX model"):
        prepare(bad, "model m", {}, tmp_path / "out.onnx")

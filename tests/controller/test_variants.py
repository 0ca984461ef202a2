"""Variant passes on a real model with real calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from controller.build.source import prepare
from controller.data.datasets import make_dataset
from controller.passes import PassInput, run_pass
from controller.passes.int8 import CalibrationReader
from tests.models import ocr_model

SHAPE = {"x": ((1, 3, 48, 192), "float32")}


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("variants")
    src = prepare(ocr_model("cls"), "cls", {"x": [1, 3, 48, 192]}, d / "source.onnx").path
    run_pass("fp32", PassInput(src, None, None), d / "fp32.onnx")
    make_dataset("ocr-cls", SHAPE, 6, 11, d / "calibration.npz")
    return {"source": src, "fp32": d / "fp32.onnx", "calibration": d / "calibration.npz", "dir": d}


def activation_scales(path: Path) -> np.ndarray:
    """The scale of every activation QuantizeLinear, in graph order."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return np.array([float(inits[n.input[1]]) for n in model.graph.node
                     if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1])


def test_calibration_methods_give_different_ranges(cls: dict[str, Path]) -> None:
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        out = cls["dir"] / f"int8-{method}.onnx"
        meta = run_pass("int8", PassInput(cls["source"], cls["fp32"], cls["calibration"]), out, {"calibration": method})
        assert meta["calibration"] == method and meta["calibration_samples"] == 6
        assert meta["ops"]["QuantizeLinear"] > 10 and meta["ops"]["DequantizeLinear"] > 10
        scales[method] = activation_scales(out)
    assert len({len(s) for s in scales.values()}) == 1
    # min-max covers every value seen; entropy and percentile clip outliers: smaller scales.
    assert scales["entropy"].sum() < scales["minmax"].sum()
    assert scales["percentile"].sum() < scales["minmax"].sum()
    assert not np.allclose(scales["entropy"], scales["percentile"])


def test_per_channel_weights_can_be_turned_off(cls: dict[str, Path]) -> None:
    def weight_scale_sizes(per_channel: bool) -> set[int]:
        out = cls["dir"] / f"int8-pc{per_channel}.onnx"
        run_pass("int8", PassInput(cls["source"], cls["fp32"], cls["calibration"]), out,
                 {"calibration": "minmax", "per_channel": per_channel})
        model = onnx.load(str(out))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {inits[n.input[1]].size for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8}
    assert max(weight_scale_sizes(True)) > 1
    assert weight_scale_sizes(False) == {1}


def test_fp16_keeps_float32_inputs_and_outputs(cls: dict[str, Path]) -> None:
    out = cls["dir"] / "fp16.onnx"
    run_pass("fp16", PassInput(cls["source"], cls["fp32"], None), out)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {i.data_type for i in model.graph.initializer if len(i.dims) > 1}
    assert kinds == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("count, stride", [(32, 4), (6, 3), (7, 1), (8, 4)])
def test_calibration_strides_divide_the_samples(tmp_path: Path, count: int, stride: int) -> None:
    path = tmp_path / "c.npz"
    make_dataset("ocr-cls", SHAPE, count, 1, path)
    reader = CalibrationReader(path)
    assert reader.stride == stride and len(reader) == count
    seen = 0
    for start in range(0, count, stride):
        reader.set_range(start, start + stride)
        while reader.get_next() is not None:
            seen += 1
    assert seen == count

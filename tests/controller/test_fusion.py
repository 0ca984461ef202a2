"""The fusion report on a small graph built here (every count known) and on the real cls model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from controller.build.source import prepare
from controller.passes import PassInput, run_pass
from controller.passes.fusion import engine_fusions, fusions
from tests.models import ocr_model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def small_model(path: Path) -> None:
    """One instance of each basic-level rewrite, and two look-alikes ORT must leave alone.

    x -> Conv -> BN -> Relu -> Conv -> Add(bias = b1 * b2, folded) -> Conv -> Mul(scale)
      -> Identity -> Relu -> Clip(0, 6) -> Conv -> Add(residual) -> Relu -> BN (after a Relu,
      not a Conv: stays) -> y
    """
    rng = np.random.default_rng(0)
    c = 4
    inits = [
        _init("w0", rng.normal(size=(c, 3, 3, 3))), _init("w1", rng.normal(size=(c, c, 1, 1))),
        _init("w2", rng.normal(size=(c, c, 1, 1))), _init("w3", rng.normal(size=(c, c, 3, 3))),
        _init("b1", rng.normal(size=(1, c, 1, 1))), _init("b2", rng.normal(size=(1, c, 1, 1))),
        _init("scale", rng.uniform(0.5, 2, size=(c, 1, 1))),
        *(_init(f"bn{k}_{p}", rng.uniform(0.5, 1.5, size=c)) for k in (0, 1) for p in ("s", "b", "m", "v")),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "bn0_s", "bn0_b", "bn0_m", "bn0_v"], ["n0"], name="bn0"),
        helper.make_node("Relu", ["n0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1"),
        helper.make_node("Mul", ["b1", "b2"], ["bias"], name="fold_me"),
        helper.make_node("Add", ["c1", "bias"], ["a1"], name="add_bias"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["c2", "scale"], ["m2"], name="mul_scale"),
        helper.make_node("Identity", ["m2"], ["i2"], name="identity"),
        helper.make_node("Relu", ["i2"], ["r2"], name="relu2"),
        helper.make_node("Constant", [], ["lo"], name="lo", value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Constant", [], ["hi"], name="hi", value=numpy_helper.from_array(np.array(6.0, np.float32))),
        helper.make_node("Clip", ["r2", "lo", "hi"], ["k2"], name="clip2"),
        helper.make_node("Conv", ["k2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "k2"], ["a3"], name="residual"),
        helper.make_node("Relu", ["a3"], ["r3"], name="relu3"),
        helper.make_node("BatchNormalization", ["r3", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["y"], name="bn1"),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fusion")
    small_model(d / "small.onnx")
    run_pass("fp32", PassInput(d / "small.onnx", None, None), d / "small-fp32.onnx")
    return d / "small.onnx", d / "small-fp32.onnx"


def test_names_each_basic_fusion_with_its_count(small: tuple[Path, Path]) -> None:
    report = fusions(*small)
    assert report["applied"] == {
        "conv+bn": 1, "conv+add(bias)": 1, "conv+mul": 1, "relu+clip": 1, "identity-elimination": 1,
        "constant-folding": 1, "constant-to-initializer": 2,
    }
    # The BatchNormalization after a Relu has no Conv to fold into, the residual Add no constant.
    assert report["ops"]["BatchNormalization"] == 1 and report["ops"]["Add"] == 1
    assert report["left_for_engine"] == {"conv+relu": 1, "conv+clip": 1, "conv+add+relu": 1}
    assert report["nodes_before"] - report["nodes_after"] == sum(report["applied"].values()) == 8


def test_the_fused_graph_computes_the_same(small: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    outs = []
    for path in small:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        outs.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_openvino_reports_what_it_fuses_at_load_time(small: tuple[Path, Path]) -> None:
    pytest.importorskip("openvino")
    report = engine_fusions(small[1])
    fused = report["fused_layers"]
    # conv0 (its BN folded by ORT) runs with its Relu, conv2 with its Clip; the residual Add,
    # its Relu and the last BN (a Multiply, to OpenVINO) run as one elementwise layer.
    assert fused.get("Convolution[conv+relu]") == 1 and fused.get("Convolution[conv+clip]") == 1, fused
    assert any(k.startswith("Eltwise[add+relu") for k in fused), fused
    assert report["layer_types"]["Convolution"] == 4


def test_real_cls_model_counts_add_up(tmp_path: Path) -> None:
    src = prepare(ocr_model("cls"), "cls", {"x": [1, 3, 48, 192]}, tmp_path / "source.onnx").path
    out = tmp_path / "fp32.onnx"
    run_pass("fp32", PassInput(src, None, None), out)
    report = fusions(src, out)
    before = Counter(n.op_type for n in onnx.load(str(src)).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    applied = report["applied"]
    assert (report["nodes_before"], report["nodes_after"]) == (sum(before.values()), sum(after.values()))
    assert report["nodes_before"] - report["nodes_after"] == sum(applied.values())
    assert not [k for k in applied if k.startswith(("other:", "added:"))], applied
    # Every BatchNormalization of this model follows a Conv and is folded into it.
    assert applied["conv+bn"] == before["BatchNormalization"] - after["BatchNormalization"] > 0
    assert applied["constant-to-initializer"] == before["Constant"]
    assert applied["matmul+add->gemm"] == after["Gemm"] == 1
    # paddle2onnx exports each conv bias as Add(conv, Reshape(b)): the Reshape folds, the Add fuses.
    assert applied["conv+add(bias)"] == before["Add"] - after["Add"] - applied["matmul+add->gemm"] > 0
    assert report["left_for_engine"].get("conv+relu", 0) > 0

"""The fine-tuning interpreter, op by op: each op it knows, on a one-node graph, gives what ONNX
Runtime gives (the attributes the PaddleOCR models and plain CNNs use, and the awkward ones:
asymmetric pads, ceil mode, negative indices, optional inputs left out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from controller.passes.finetune import FinetuneUnsupported  # noqa: E402
from controller.passes.finetune.interpreter import build_module, op_table  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return (np.abs(RNG.standard_normal(shape)) + 0.5).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    """One node ``op`` reading ``inputs`` (name -> array; a name in ``consts`` is an initializer,
    "" an optional input left out) and writing ``y``."""

    id: str
    op: str
    inputs: list[tuple[str, np.ndarray | None]]
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: tuple[str, ...] = ()
    opset: int = 13
    out_type: int = TensorProto.FLOAT

    def model(self) -> onnx.ModelProto:
        graph_inputs, inits = [], []
        for name, value in self.inputs:
            if not name:
                continue
            assert value is not None
            if name in self.consts:
                inits.append(numpy_helper.from_array(value, name))
            else:
                elem = helper.np_dtype_to_tensor_dtype(value.dtype)
                graph_inputs.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
        node = helper.make_node(self.op, [name for name, _ in self.inputs], ["y"], **self.attrs)
        graph = helper.make_graph([node], self.id, graph_inputs, [helper.make_tensor_value_info("y", self.out_type, None)],
                                  inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return model

    def feeds(self) -> dict[str, np.ndarray]:
        return {name: value for name, value in self.inputs if name and name not in self.consts and value is not None}


W = rand(4, 3, 3, 3)
CASES = [
    # Weighted ops.
    Case("conv-pad-bias", "Conv", [("x", rand(2, 3, 7, 6)), ("w", W), ("b", rand(4))], {"pads": [1, 1, 1, 1]}, ("w", "b")),
    Case("conv-stride-asymmetric-pads", "Conv", [("x", rand(1, 3, 8, 9)), ("w", W)],
         {"strides": [2, 2], "pads": [0, 1, 1, 0]}, ("w",)),
    Case("conv-depthwise-dilated", "Conv", [("x", rand(1, 4, 9, 9)), ("w", rand(4, 1, 3, 3)), ("b", rand(4))],
         {"group": 4, "dilations": [2, 2], "pads": [2, 2, 2, 2]}, ("w", "b")),
    Case("conv-1d", "Conv", [("x", rand(2, 3, 10)), ("w", rand(5, 3, 3))], {"pads": [1, 1]}, ("w",)),
    Case("conv-transpose", "ConvTranspose", [("x", rand(1, 3, 5, 5)), ("w", rand(3, 2, 3, 3)), ("b", rand(2))],
         {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, ("w", "b")),
    Case("gemm-transB-bias", "Gemm", [("x", rand(3, 6)), ("w", rand(5, 6)), ("c", rand(5))],
         {"transB": 1, "alpha": 0.5, "beta": 2.0}, ("w", "c")),
    Case("gemm-transA", "Gemm", [("x", rand(6, 3)), ("w", rand(6, 4))], {"transA": 1}, ("w",)),
    Case("matmul-3d", "MatMul", [("x", rand(2, 5, 6)), ("w", rand(6, 4))], consts=("w",)),
    # Activations.
    Case("relu", "Relu", [("x", rand(2, 3, 4))]),
    Case("leaky-relu", "LeakyRelu", [("x", rand(2, 3, 4))], {"alpha": 0.1}),
    Case("sigmoid", "Sigmoid", [("x", rand(2, 3, 4))]),
    Case("tanh", "Tanh", [("x", rand(2, 3, 4))]),
    Case("hard-sigmoid", "HardSigmoid", [("x", rand(2, 3, 4) * 4)], {"alpha": 1 / 6, "beta": 0.5}),
    Case("hard-swish", "HardSwish", [("x", rand(2, 3, 4) * 4)], opset=14),
    Case("clip-min-max", "Clip", [("x", rand(2, 3, 4)), ("lo", np.array(-0.5, np.float32)),
                                  ("hi", np.array(0.7, np.float32))], consts=("lo", "hi")),
    Case("clip-max-only", "Clip", [("x", rand(2, 3, 4)), ("", None), ("hi", np.array(6.0, np.float32))], consts=("hi",)),
    # Elementwise, broadcasting.
    Case("add-broadcast", "Add", [("x", rand(2, 3, 4, 5)), ("b", rand(3, 1, 1))], consts=("b",)),
    Case("sum-three", "Sum", [("x", rand(2, 3)), ("y1", rand(2, 3)), ("y2", rand(3))]),
    Case("sub", "Sub", [("x", rand(2, 3)), ("z", rand(2, 3))]),
    Case("mul-broadcast", "Mul", [("x", rand(2, 3, 4, 4)), ("s", rand(2, 3, 1, 1))]),
    Case("div", "Div", [("x", rand(2, 3)), ("z", positive(2, 3))]),
    Case("pow", "Pow", [("x", positive(2, 3)), ("e", np.array(1.5, np.float32))], consts=("e",)),
    Case("sqrt", "Sqrt", [("x", positive(2, 3))]),
    Case("max-three", "Max", [("x", rand(2, 3)), ("y1", rand(2, 3)), ("y2", rand(2, 3))]),
    Case("min-two", "Min", [("x", rand(2, 3)), ("z", rand(2, 3))]),
    Case("neg", "Neg", [("x", rand(2, 3))]),
    Case("exp", "Exp", [("x", rand(2, 3))]),
    Case("identity", "Identity", [("x", rand(2, 3))]),
    Case("dropout", "Dropout", [("x", rand(2, 3))]),
    # Pooling.
    Case("global-average-pool", "GlobalAveragePool", [("x", rand(2, 3, 5, 4))]),
    Case("global-max-pool", "GlobalMaxPool", [("x", rand(2, 3, 5, 4))]),
    Case("max-pool-pads", "MaxPool", [("x", rand(1, 2, 7, 7))], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("max-pool-ceil", "MaxPool", [("x", rand(1, 2, 8, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    Case("max-pool-asymmetric", "MaxPool", [("x", rand(1, 2, 6, 6))], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
    Case("average-pool", "AveragePool", [("x", rand(1, 2, 6, 8))], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Case("average-pool-pads-excluded", "AveragePool", [("x", rand(1, 2, 5, 5))],
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    Case("average-pool-pads-included", "AveragePool", [("x", rand(1, 2, 5, 5))],
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    # Shapes and layout.
    Case("reshape-zero-and-minus-one", "Reshape", [("x", rand(2, 3, 4)), ("s", ints(0, -1))], consts=("s",)),
    Case("flatten", "Flatten", [("x", rand(2, 3, 4))]),
    Case("flatten-axis-2", "Flatten", [("x", rand(2, 3, 4, 5))], {"axis": 2}),
    Case("softmax-axis-1", "Softmax", [("x", rand(2, 5, 3))], {"axis": 1}),
    Case("softmax-last", "Softmax", [("x", rand(2, 5, 3))]),
    Case("transpose", "Transpose", [("x", rand(2, 3, 4, 5))], {"perm": [0, 2, 3, 1]}),
    Case("transpose-reversed", "Transpose", [("x", rand(2, 3, 4))]),
    Case("concat", "Concat", [("x", rand(2, 3, 4)), ("z", rand(2, 5, 4))], {"axis": 1}),
    Case("shape", "Shape", [("x", rand(2, 3, 4))], out_type=TensorProto.INT64),
    Case("slice-negative-and-steps", "Slice", [("x", rand(4, 10, 6)), ("st", ints(1, -5)), ("en", ints(9, 100)),
                                               ("ax", ints(1, 2)), ("sp", ints(2, 1))], consts=("st", "en", "ax", "sp")),
    Case("slice-default-axes", "Slice", [("x", rand(4, 6)), ("st", ints(1)), ("en", ints(-1))], consts=("st", "en")),
    Case("squeeze", "Squeeze", [("x", rand(2, 1, 3, 1)), ("ax", ints(1, -1))], consts=("ax",)),
    Case("unsqueeze", "Unsqueeze", [("x", rand(2, 3)), ("ax", ints(0, -1))], consts=("ax",)),
    Case("reduce-mean-keep", "ReduceMean", [("x", rand(2, 3, 4))], {"axes": [1, 2]}),
    Case("reduce-mean-drop", "ReduceMean", [("x", rand(2, 3, 4))], {"axes": [-1], "keepdims": 0}),
    Case("reduce-mean-all", "ReduceMean", [("x", rand(2, 3, 4))]),
    # Resampling, normalisation, types, indexing.
    Case("resize-nearest-scales", "Resize", [("x", rand(1, 2, 3, 4)), ("", None),
                                             ("sc", np.array([1, 1, 2, 2], np.float32))], {"mode": "nearest"}, ("sc",)),
    Case("resize-nearest-sizes", "Resize", [("x", rand(1, 2, 3, 4)), ("", None), ("", None), ("sz", ints(1, 2, 6, 8))],
         {"mode": "nearest"}, ("sz",)),
    Case("resize-linear", "Resize", [("x", rand(1, 2, 3, 4)), ("", None), ("sc", np.array([1, 1, 2, 2], np.float32))],
         {"mode": "linear"}, ("sc",)),
    Case("resize-linear-align-corners", "Resize", [("x", rand(1, 2, 3, 4)), ("", None), ("", None),
                                                   ("sz", ints(1, 2, 5, 7))],
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, ("sz",)),
    Case("batch-normalization", "BatchNormalization", [("x", rand(2, 3, 4, 4)), ("g", rand(3)), ("b", rand(3)),
                                                       ("m", rand(3)), ("v", positive(3))],
         {"epsilon": 1e-3}, ("g", "b", "m", "v")),
    Case("cast-to-int64", "Cast", [("x", rand(2, 3) * 5)], {"to": TensorProto.INT64}, out_type=TensorProto.INT64),
    Case("cast-to-float", "Cast", [("x", ints(3, -2, 7))], {"to": TensorProto.FLOAT}),
    Case("gather-negative", "Gather", [("x", rand(5, 3)), ("i", ints(0, -1, 2))], consts=("i",)),
    Case("gather-axis-1-2d-indices", "Gather", [("x", rand(2, 5, 3)), ("i", np.array([[4, 0], [1, -2]], np.int64))],
         {"axis": 1}, ("i",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_op_gives_what_onnx_runtime_gives(case: Case) -> None:
    import onnxruntime as ort

    model = case.model()
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, case.feeds())
    module = build_module(model)
    with torch.no_grad():
        got = module({n: torch.from_numpy(v) for n, v in case.feeds().items()}, ["y"])["y"].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_every_op_the_interpreter_knows_is_checked_here() -> None:
    assert {c.op for c in CASES} == set(op_table())


def test_an_op_it_does_not_know_is_named_when_the_module_is_built() -> None:
    erf = Case("erf", "Erf", [("x", rand(2, 3))])
    with pytest.raises(FinetuneUnsupported, match="no torch kernel here for Erf"):
        build_module(erf.model())

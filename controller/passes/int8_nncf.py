"""The ``int8-nncf`` variant, OpenVINO's own int8: NNCF post-training quantization of the fused
fp32 ONNX, output ONNX.

NNCF (``nncf.quantize``) places quantizers by OpenVINO's hardware config (which inputs of which
ops the CPU plugin runs in int8), measures activation ranges on the calibration samples, then
corrects the biases the rounding shifted (fast bias correction). The ONNX backend is used: the
result is a QDQ ONNX file like the ``int8`` variant's, a normal variant every engine loads.

One rewrite follows, for OpenVINO's sake. NNCF's ONNX backend writes signed activations
(HardSwish and Add outputs; all of them with the symmetric preset) as int8
QuantizeLinear/DequantizeLinear pairs. ONNX Runtime runs them right; OpenVINO 2026.4's CPU plugin
does not (PP-OCRv4 on OpenVINO, 32 calibration samples: det hmean 0.0 instead of 0.990, rec
exact match 0.53 instead of 0.900), and with its low-precision transformations turned off the
same file is right. NNCF's OpenVINO backend stores such activations as unsigned, which OpenVINO
runs right, and :func:`unsigned_activations` does the same to the ONNX: each per-tensor int8
pair becomes uint8 with the zero point moved by 128, the same function
(``clamp(round(x/s) + z, -128, 127) + 128 == clamp(round(x/s) + z + 128, 0, 255)``), so ONNX
Runtime's results do not change. OpenVINO then matches the OpenVINO-backend result in accuracy,
and in speed on cls and rec; on det it is 6% slower (32 vs 30 ms), which is OpenVINO's offline
transformations (the same file through ``ov.convert_model`` runs in 30 ms), not NNCF's placement.
Per-channel activation pairs (NNCF's inputs of depthwise convolutions) stay as they are: ONNX
Runtime's fused int8 convolution takes only a per-tensor output zero point.

Options (``NncfOptions``: the spec's ``quantization`` section, NNCF's own keys included):

- ``nncf_preset``: ``performance`` (default, NNCF's own for CNNs): symmetric int8 weights and
  activations; ``mixed``: asymmetric activations, NNCF's advice for non-ReLU activations such
  as PaddleOCR's HardSwish. Measured on OpenVINO (1 thread), same speed, performance at least as
  accurate: cls 0.985 both, rec exact match 0.900 vs 0.875, det hmean 0.990 vs 0.988.
- ``nncf_model_type``: none (default: NNCF's CNN rules) or ``transformer``: keeps
  attention's Softmax/LayerNorm paths in float and smooths MatMul activations (SmoothQuant);
  meant for attention-heavy models (the PP-OCRv4 recognizer has two small SVTR blocks only).
- ``nncf_fast_bias_correction`` (default true): NNCF's bias correction after quantizing.
- ``per_channel`` (default true): per-output-channel weight scales.
- ``calibration`` (entropy/minmax/percentile) names ONNX Runtime's calibrators; NNCF
  estimates ranges its own way (min/max by the preset's rules), so it is only recorded.

The subset size is the number of calibration samples: every sample is used, once each.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

from controller.passes import Pass, PassInput, register
from controller.passes.int8 import Int8Options


class NncfOptions(Int8Options):
    """The int8 pass's keys, and NNCF's own."""

    nncf_preset: Literal["performance", "mixed"] = Field(
        "performance", description="int8-nncf: NNCF's preset: performance (symmetric activations) or mixed "
                                   "(asymmetric activations, NNCF's advice for non-ReLU activations)")
    nncf_model_type: Literal["transformer"] | None = Field(
        None, description="int8-nncf: transformer keeps attention's Softmax/LayerNorm paths in float and "
                          "smooths MatMul activations (SmoothQuant); default: NNCF's rules for CNNs")
    nncf_fast_bias_correction: bool = Field(
        True, description="int8-nncf: NNCF's fast bias correction of the biases rounding shifted")


@register()
class Int8Nncf(Pass[NncfOptions]):
    name = "int8-nncf"
    version = 1
    starts_from = "fp32"
    precision = "int8"
    calibrated = True
    section = "quantization"
    options = NncfOptions

    def run(self, inp: PassInput, options: NncfOptions, out: Path) -> dict[str, Any]:
        assert inp.fp32 is not None and inp.calibration is not None
        return nncf_int8(inp.fp32, inp.calibration, out, options)


class _Samples:
    """The calibration file's samples as model-ready input dicts; iterable again and again
    (NNCF walks the data once for statistics and again for bias correction)."""

    def __init__(self, path: Path) -> None:
        from agent.dataset import load_dataset

        self._data = load_dataset(str(path))

    def __len__(self) -> int:
        return int(self._data.count)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._data.count):
            yield self._data.batch([i])


def nncf_int8(fp32: Path, calibration: Path, out: Path, options: NncfOptions) -> dict[str, Any]:
    """Quantize the fused fp32 ONNX ``fp32`` with NNCF on the samples in ``calibration``; write
    QDQ ONNX to ``out``; return what was quantized and how."""
    preset, model_type = options.nncf_preset, options.nncf_model_type
    per_channel, bias_correction = options.per_channel, options.nncf_fast_bias_correction

    import nncf  # here, not at the top: it imports torch and takes seconds
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    samples = _Samples(calibration)
    if len(samples) < 1:
        raise ValueError(f"calibration file {calibration.name} holds no sample")
    model = _with_shapes(onnx.load(str(fp32)))
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=None if per_channel else QuantizationParameters(per_channel=False))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        preset=nncf.QuantizationPreset(preset),
        # ANY: the hardware config every OpenVINO device shares; ONNX Runtime follows it too.
        target_device=nncf.TargetDevice.ANY,
        subset_size=len(samples),
        fast_bias_correction=bias_correction,
        model_type=None if model_type is None else nncf.ModelType(model_type),
        advanced_parameters=advanced,
    )
    unsigned = unsigned_activations(quantized)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(out))
    return {
        "ops": dict(Counter(n.op_type for n in quantized.graph.node)),
        "quantized": quantized_ops(quantized),
        "quantizer": "nncf", "nncf": nncf.__version__, "backend": "onnx",
        "preset": preset, "model_type": model_type, "per_channel": per_channel,
        "fast_bias_correction": bias_correction, "target_device": "ANY",
        "calibration_samples": len(samples), "subset_size": len(samples), "activations_made_unsigned": unsigned,
        "calibration": "nncf min/max (the spec's calibration method applies to onnxruntime's int8 only)",
    }


def _with_shapes(model: Any) -> Any:
    """The model with every intermediate shape it can get: NNCF's statistics need ranks, and
    ONNX's own inference stops at the recognizer's computed Reshape shapes; ONNX Runtime's
    symbolic inference does not. Without it NNCF only warns, so a failure keeps the model as is."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # symbolic inference raises bare Exceptions on ops it does not know
        return model


def unsigned_activations(model: Any) -> int:
    """Turn every per-tensor int8 activation QuantizeLinear (and the DequantizeLinears reading
    it) into uint8 with zero point + 128: the same values, in the form OpenVINO runs right.
    Returns how many quantizers changed."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    unsigned: dict[str, str] = {}  # int8 zero point -> its uint8 twin (NNCF may share one)
    changed: set[str] = set()
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[0] in inits or q.input[2] not in inits:
            continue  # weights stay int8; no zero point means uint8 already
        zero = numpy_helper.to_array(inits[q.input[2]])
        dqs = readers.get(q.output[0], [])
        if zero.dtype != np.int8 or zero.size != 1 or not dqs or any(
                d.op_type != "DequantizeLinear" or d.input[2:3] != q.input[2:3] for d in dqs):
            continue
        name = q.input[2]
        if name not in unsigned:
            unsigned[name] = f"{name}/uint8"
            twin = numpy_helper.from_array((zero.astype(np.int16) + 128).astype(np.uint8), unsigned[name])
            graph.initializer.append(twin)
        q.input[2] = unsigned[name]
        for d in dqs:
            d.input[2] = unsigned[name]
        changed.add(q.output[0])
    for info in graph.value_info:  # shape inference recorded the quantized tensors as int8
        if info.name in changed:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    used = {name for n in graph.node for name in n.input}
    for name in unsigned:
        if name not in used:
            graph.initializer.remove(inits[name])
    return len(changed)


def quantized_ops(model: Any) -> dict[str, Any]:
    """What computes in int8: the ops reading an int8 weight through a DequantizeLinear (by op
    type), and how many activation quantizers there are."""
    from onnx import TensorProto

    int8_weights = {i.name for i in model.graph.initializer if i.data_type in (TensorProto.INT8, TensorProto.UINT8)}
    weight_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_weights}
    ops = Counter(n.op_type for n in model.graph.node if n.op_type != "QuantizeLinear" and any(i in weight_dq for i in n.input))
    activations = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    return {"int8_weight_ops": dict(ops), "activation_quantizers": activations}

"""Variant recipes: how one prepared fp32 model becomes fp32-fused, fp16 and int8 artifacts.

A registry in the manner of Olive's passes: each recipe registers under its variant name and
imports its heavy libraries inside the function. Recipes are pure functions of their inputs,
so the controller caches their outputs by content hash (see ``controller.build.compile``).
A new variant is one more decorated function here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Bump a recipe's version when its output would change for the same input: it is part of
# the cache key.
RECIPE_VERSION = 2  # 2: the fp32 recipe's record names the fusions it applied (controller.passes.fusion)
CALIBRATION_CHUNK = 4


@dataclass(frozen=True)
class RecipeInput:
    source: Path  # the prepared model (shapes fixed, opset >= 13)
    fp32: Path | None  # the fused fp32 artifact, for recipes that start from it
    calibration: Path | None  # a dataset .npz, never the evaluation samples
    options: dict[str, Any] = field(default_factory=dict)


Recipe = Callable[[RecipeInput, Path], dict[str, Any]]
RECIPES: dict[str, Recipe] = {}
# Which artifact a recipe reads: "source" or "fp32".
STARTS_FROM: dict[str, str] = {}
PRECISION: dict[str, str] = {}
# Recipes that read calibration samples (rendered apart from the evaluation samples).
NEEDS_CALIBRATION: set[str] = set()


def recipe(name: str, *, starts_from: str, precision: str, calibrated: bool = False) -> Callable[[Recipe], Recipe]:
    def deco(fn: Recipe) -> Recipe:
        if name in RECIPES:
            raise ValueError(f"variant recipe {name!r} is already registered")
        RECIPES[name] = fn
        STARTS_FROM[name] = starts_from
        PRECISION[name] = precision
        if calibrated:
            NEEDS_CALIBRATION.add(name)
        return fn

    return deco


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node))


@recipe("fp32", starts_from="source", precision="fp32")
def fp32_fused(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """Offline graph optimisation at ONNX Runtime's *basic* level.

    Basic is the portable level: constant folding and semantics-preserving fusions (Conv+BN,
    Conv+Add, Conv+Mul, Relu+Clip) that leave standard ONNX ops, so OpenVINO and every other
    engine still load the result. The extended level would emit ORT-only ops (FusedConv).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(inp.source), opts, providers=["CPUExecutionProvider"])
    from controller.passes.fusion import fusions

    return fusions(inp.source, out)


@recipe("fp16", starts_from="fp32", precision="fp16")
def fp16(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """Weights and compute in float16; inputs and outputs stay float32 for the caller."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    assert inp.fp32 is not None
    model = convert_float_to_float16(onnx.load(str(inp.fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"ops": op_counts(out)}


@recipe("int8", starts_from="fp32", precision="int8", calibrated=True)
def int8(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """ONNX Runtime static post-training quantization: QDQ, int8 weights, real calibration data.

    Activations are uint8 and weights int8 (the U8S8 pair that x86 VNNI kernels and OpenVINO's
    QDQ import both run fastest); weights per channel unless the spec turns it off.
    """
    assert inp.fp32 is not None and inp.calibration is not None
    count = _quantize(inp.fp32, out, inp.calibration, inp.options, exclude=[], op_types=inp.options.get("op_types"))
    return {"ops": op_counts(out), "calibration": inp.options.get("calibration", "entropy"),
            "calibration_samples": count, "per_channel": bool(inp.options.get("per_channel", True)),
            "op_types": inp.options.get("op_types") or "all"}


@recipe("int8-mixed", starts_from="fp32", precision="int8", calibrated=True)
def int8_mixed(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """int8 with the most sensitive nodes kept in float until the spec's accuracy budget holds
    on the calibration data (see controller.passes.mixed_precision)."""
    from controller.passes.mixed_precision import search

    assert inp.fp32 is not None and inp.calibration is not None
    calibration = inp.calibration
    report = search(inp.fp32, calibration, out, inp.options,
                    lambda src, dst, exclude, op_types: _quantize(src, dst, calibration, inp.options, exclude, op_types))
    return {"ops": op_counts(out), "calibration": inp.options.get("calibration", "entropy"), "mixed": report}


@recipe("int8-nncf", starts_from="fp32", precision="int8", calibrated=True)
def int8_nncf(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """OpenVINO's own int8: NNCF post-training quantization on the calibration samples (ONNX
    backend, activations stored unsigned so OpenVINO runs them right); see controller.passes.nncf_quant."""
    from controller.passes.nncf_quant import nncf_int8

    assert inp.fp32 is not None and inp.calibration is not None
    return nncf_int8(inp.fp32, inp.calibration, out, inp.options)


@recipe("pruned", starts_from="fp32", precision="fp32", calibrated=True)
def pruned(inp: RecipeInput, out: Path) -> dict[str, Any]:
    """Structured channel pruning by per-layer sensitivity under the accuracy budget, fine-tuned
    with distillation from fp32 where torch is installed; see controller.passes.pruning."""
    from controller.passes.pruning import variant

    return variant(inp, out)


def _quantize(src: Path, out: Path, calibration: Path, options: dict[str, Any], exclude: list[str],
              op_types: list[str] | None = None) -> int:
    """Quantize ``src`` into ``out`` (only ``op_types`` when given), leaving the ``exclude`` nodes
    in float; returns the sample count."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[options.get("calibration", "entropy")]
    reader = CalibrationReader(calibration)
    quantize_static(
        str(src),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=bool(options.get("per_channel", True)),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=exclude,
        op_types_to_quantize=op_types,
        # ORT keeps every intermediate tensor of every calibration sample until the reader is
        # empty: over 20 GB for the 640x640 detector. Strides fold them into the ranges or
        # histograms a few samples at a time, which bounds memory and gives the same result.
        extra_options={"CalibStridedMinMax": reader.stride},
    )
    return reader.count


class CalibrationReader:
    """Feeds ONNX Runtime real samples, one at a time, one stride after another (at most ``limit``)."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        from agent.dataset import load_dataset

        self._data = load_dataset(str(path))
        self.count = min(self._data.count, limit or self._data.count)
        # ORT wants strides that divide the sample count exactly.
        self.stride = next(d for d in range(CALIBRATION_CHUNK, 0, -1) if self.count % d == 0)
        self._next, self._end = 0, self.count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):  # ORT's debugging helpers iterate a reader instead of calling get_next
        return iter(self.get_next, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, self.count)

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        batch = self._data.batch([self._next])
        self._next += 1
        return batch

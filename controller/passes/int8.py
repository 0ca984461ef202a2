"""The ``int8`` variant: ONNX Runtime static post-training quantization, QDQ, on real calibration data.

Activations are uint8 and weights int8 (the U8S8 pair that x86 VNNI kernels and OpenVINO's QDQ
import both run fastest); weights per channel unless the spec turns it off. ``quantize`` is also
the int8-mixed pass's quantizer, so both variants quantize exactly alike, and ``Int8Options`` the
base of every int8 pass's options (the spec's ``quantization`` section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

from controller.passes import Pass, PassInput, register
from controller.passes.graph import op_counts
from controller.validation import Strict

CALIBRATION_CHUNK = 4


class Int8Options(Strict):
    """The spec's ``quantization`` keys every int8 pass reads (engines that quantize themselves
    follow them too: ncnn reads ``ncnn_layers``)."""

    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "entropy", description="int8 calibration: min-max, entropy (KL divergence) or percentile")
    samples: int = Field(32, ge=1, le=10_000, description="calibration samples, never the evaluation ones")
    per_channel: bool = Field(True, description="per-channel int8 weights")
    op_types: list[str] | None = Field(
        None, description="quantize only these op types, e.g. [Conv, MatMul, Gemm]; default: every op ORT can")
    ncnn_layers: list[Literal["Convolution", "ConvolutionDepthWise", "InnerProduct"]] = Field(
        ["Convolution"], min_length=1,
        description="ncnn int8: the layer types quantized (on x86 its int8 depthwise and inner-product layers "
                    "were slower than fp32; arm boards gain from them)")


@register()
class Int8(Pass[Int8Options]):
    name = "int8"
    version = 1
    starts_from = "fp32"
    precision = "int8"
    calibrated = True
    section = "quantization"
    options = Int8Options

    def run(self, inp: PassInput, options: Int8Options, out: Path) -> dict[str, Any]:
        assert inp.fp32 is not None and inp.calibration is not None
        count = quantize(inp.fp32, out, inp.calibration, options, exclude=[], op_types=options.op_types)
        return {"ops": op_counts(out), "calibration": options.calibration, "calibration_samples": count,
                "per_channel": options.per_channel, "op_types": options.op_types or "all"}


def quantize(src: Path, out: Path, calibration: Path, options: Int8Options, exclude: list[str],
             op_types: list[str] | None = None) -> int:
    """Quantize ``src`` into ``out`` (only ``op_types`` when given), leaving the ``exclude`` nodes
    in float; returns the sample count."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[options.calibration]
    reader = CalibrationReader(calibration)
    quantize_static(
        str(src),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
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

    def __iter__(self) -> Iterator[dict[str, Any]]:  # ORT's debugging helpers iterate a reader
        return iter(self.get_next, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, self.count)

    def get_next(self) -> dict[str, Any] | None:
        if self._next >= self._end:
            return None
        batch: dict[str, Any] = self._data.batch([self._next])
        self._next += 1
        return batch

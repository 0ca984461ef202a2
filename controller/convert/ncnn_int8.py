"""ncnn int8: calibrate an fp32 ncnn model on samples and rewrite it with int8 weights and scales.

ncnn's own tools for this, ncnn2table and ncnn2int8, are C++ programs that no wheel and no
Debian package ships (the ncnn sdist on PyPI has the library, not its tools/). What they write is
small and fixed by ncnn's loader (``src/modelbin.cpp`` and the layers' ``load_model``): a
quantized Convolution, ConvolutionDepthWise or InnerProduct has param 8 (``int8_scale_term``)
set, its weights stored as int8 behind the tag ``0x000D4B38``, and after its bias two float
arrays: the weight scales (one per output channel; one per group for a depthwise layer) and the
scale of its input blob. ncnn then quantizes the input at run time, multiplies in int8 and
dequantizes the output to fp32 for the next layer.

So this module does what those tools do, from Python:

1. read the ``.param`` and split the ``.bin`` into each layer's arrays. Only the layers in
   ``_reads`` carry weights here; the split must end exactly at the end of the file, so a model
   with weights of any other layer type is refused rather than misread;
2. run the fp32 model in ncnn on the calibration samples and take each quantized layer's input
   range: ``minmax`` (the largest magnitude seen), ``entropy`` (the threshold whose clipped,
   128-level histogram is closest by KL divergence, as TensorRT and ncnn2table choose it) or
   ``percentile`` (99.99% of the non-zero magnitudes);
3. write the new ``.param`` and ``.bin``; the other layers' bytes are copied as they were.

Which layer types are quantized is the spec's ``quantization.ncnn_layers`` (default:
Convolution): on this project's x86 machine ncnn's int8 depthwise and inner-product layers were
slower than their fp32 ones (docs/optimization.md has the figures); on arm boards, where ncnn's
int8 depthwise kernels are its best, all three should be listed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.convert import ConversionError, float_weighted_nodes

QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
DEFAULT_LAYERS = ("Convolution",)
METHODS = ("minmax", "entropy", "percentile")
INT8_TAG = 0x000D4B38  # modelbin.cpp: int8 data follows
FLOAT_TAG = 0           # raw float32 follows
HISTOGRAM_BINS = 2048   # as ncnn2table: 2048 bins of |x| over [0, max], merged into 128 levels
LEVELS = 128
PERCENTILE = 0.9999
DEAD_WEIGHT = 1e-30     # a channel whose weights are all smaller than this is zero: 127 / max |w| overflows


@dataclass
class Layer:
    """One line of an ncnn ``.param``: type, name, blobs and its ``key=value`` params as written."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str]

    def int(self, key: int, default: int = 0) -> int:
        value = self.params.get(key)
        return default if value is None else int(float(value))

    def line(self) -> str:
        return " ".join([self.type, self.name, str(len(self.bottoms)), str(len(self.tops)), *self.bottoms,
                         *self.tops, *(f"{k}={v}" for k, v in self.params.items())])


def read_param_text(text: str) -> tuple[list[str], list[Layer]]:
    """The header lines (magic, counts) and the layers of a text ``.param``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    layers = []
    for ln in lines[2:]:
        row = ln.split()
        try:
            nb, nt = int(row[2]), int(row[3])
            params = {int(k): v for k, v in (item.split("=", 1) for item in row[4 + nb + nt:])}
        except (IndexError, ValueError):
            raise ConversionError(f"ncnn int8: cannot read the .param line {ln[:120]!r}") from None
        layers.append(Layer(row[0], row[1], row[4:4 + nb], row[4 + nb:4 + nb + nt], params))
    return lines[:2], layers


def _reads(layer: Layer) -> list[tuple[int, bool]]:
    """What the layer's ``load_model`` reads from the .bin: (floats, preceded by a 4-byte tag)."""
    t = layer.type
    if t in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise"):
        if layer.int(19 if t.startswith("Convolution") else 28):  # dynamic weight: an input, not in the .bin
            return []
        return [(layer.int(6), True)] + ([(layer.int(0), False)] if layer.int(5) else [])
    if t == "InnerProduct":
        return [(layer.int(2), True)] + ([(layer.int(0), False)] if layer.int(1) else [])
    if t == "LayerNorm":
        return [(layer.int(0), False)] * 2 if layer.int(2, 1) else []
    if t == "Gemm":
        m, n, k = layer.int(7), layer.int(8), layer.int(9)
        reads = [(m * k, True)] if layer.int(4) else []
        reads += [(n * k, True)] if layer.int(5) else []
        if layer.int(6) and layer.int(10) != -1:
            size = {0: 1, 1: m, 2: m, 3: n * m, 4: n}.get(layer.int(10))
            if size is None:
                raise ConversionError(f"ncnn int8: Gemm {layer.name} has an unknown C broadcast type {layer.int(10)}")
            reads.append((size, True))
        return reads
    return []


def split_weights(layers: list[Layer], data: bytes) -> list[list[np.ndarray]]:
    """Each layer's float32 arrays from the .bin, in load order."""
    offset, out = 0, []
    for layer in layers:
        if layer.type in QUANTIZABLE and 8 in layer.params:
            raise ConversionError(f"ncnn int8: layer {layer.name} is already quantized (int8_scale_term is set)")
        arrays = []
        for n, tagged in _reads(layer):
            if tagged:
                tag = struct.unpack_from("<I", data, offset)[0] if offset + 4 <= len(data) else None
                if tag != FLOAT_TAG:
                    raise ConversionError(f"ncnn int8: layer {layer.name}'s weights are not stored as float32 "
                                          f"(tag {tag!r}); convert with pnnx fp16=0")
                offset += 4
            if offset + 4 * n > len(data):
                raise ConversionError(f"ncnn int8: the .bin ends inside layer {layer.name}'s weights")
            arrays.append(np.frombuffer(data, np.float32, n, offset))
            offset += 4 * n
        out.append(arrays)
    if offset != len(data):
        kinds = sorted({layer.type for layer in layers if not _reads(layer)})
        raise ConversionError(f"ncnn int8: the .bin has {len(data) - offset} bytes no known layer reads: a layer "
                              f"type among {', '.join(kinds)} carries weights this converter does not know")
    return out


def kl_threshold(hist: np.ndarray, width: float, levels: int = LEVELS) -> float:
    """The clipping threshold whose ``levels``-level quantization of the histogram of |x| loses the
    least information (KL divergence of the quantized from the clipped distribution)."""
    hist = hist.astype(np.float64)
    best, best_i = np.inf, len(hist)
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # what is clipped lands in the last bin
        level = (np.arange(i) * levels) // i
        used = hist[:i] > 0
        # Each level spreads its mass evenly over the bins it covers that held any.
        mass = np.bincount(level, weights=hist[:i], minlength=levels)
        bins = np.bincount(level, weights=used, minlength=levels)
        q = np.where(used, (mass / np.maximum(bins, 1))[level], 0.0)
        if p.sum() == 0 or q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        kept = p > 0
        kl = float(np.sum(p[kept] * np.log(p[kept] / np.maximum(q[kept], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * width


def input_thresholds(param: Path, weights: Path, feeds: list[dict[str, np.ndarray]], blobs: list[str],
                     method: str) -> dict[str, float]:
    """Each blob's clipping threshold over the samples (``feeds``: ncnn input blob -> CHW array)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.lightmode = False  # keep every blob: one extractor serves them all
    for switch in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, switch, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ConversionError("ncnn int8: ncnn could not load the fp32 model to calibrate it")

    def magnitudes(feed: dict[str, np.ndarray]) -> Any:
        with net.create_extractor() as ex:
            for blob, x in feed.items():
                ex.input(blob, ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)).clone())
            for blob in blobs:
                code, mat = ex.extract(blob)
                if code != 0:
                    raise ConversionError(f"ncnn int8: ncnn failed to compute blob {blob} on a calibration sample")
                yield blob, np.abs(np.array(mat, dtype=np.float32))

    try:
        peak = dict.fromkeys(blobs, 0.0)
        for feed in feeds:
            for blob, a in magnitudes(feed):
                peak[blob] = max(peak[blob], float(a.max(initial=0.0)))
        if method == "minmax":
            return peak
        hist = {blob: np.zeros(HISTOGRAM_BINS) for blob in blobs}
        for feed in feeds:  # a second pass: the histograms need each blob's range first
            for blob, a in magnitudes(feed):
                # Exact zeros (half of what a ReLU gives) stay out, as in ncnn2table: in the first bin
                # they outweigh the rest, and KL then clips far too low (the PaddleOCR classifier with
                # every layer in int8 scored 0.925 with them counted, 0.995 without; fp32 0.985).
                if peak[blob] > 0:
                    hist[blob] += np.histogram(a[a > 0], bins=HISTOGRAM_BINS, range=(0.0, peak[blob]))[0]
    finally:
        net.clear()
    out = {}
    for blob in blobs:
        width = peak[blob] / HISTOGRAM_BINS
        if peak[blob] == 0:
            out[blob] = 0.0
        elif method == "entropy":
            out[blob] = kl_threshold(hist[blob], width)
        else:
            cumulative = np.cumsum(hist[blob])
            out[blob] = (int(np.searchsorted(cumulative, PERCENTILE * cumulative[-1])) + 1) * width
    return out


def _to_int8(x: np.ndarray) -> np.ndarray:
    # ncnn's float2int8 rounds half away from zero; numpy's round goes to even.
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -127, 127).astype(np.int8)


def _quantized(layer: Layer, arrays: list[np.ndarray], input_scale: float, per_channel: bool) -> bytes:
    """The layer's .bin bytes in int8: tagged int8 weights, its bias, weight scales, input scale."""
    rows = layer.int(7, 1) if layer.type == "ConvolutionDepthWise" else layer.int(0)
    w = arrays[0].reshape(rows, -1)
    peak = np.abs(w).max(axis=1)
    if not per_channel:
        peak = np.full_like(peak, peak.max())
    live = peak > DEAD_WEIGHT
    scales = np.where(live, 127.0 / np.where(live, peak, 1.0), 1.0).astype(np.float32)
    q = _to_int8(w * scales[:, None]).ravel()
    out = struct.pack("<I", INT8_TAG) + q.tobytes() + b"\0" * (-q.size % 4)
    out += b"".join(a.tobytes() for a in arrays[1:])
    return out + scales.tobytes() + np.float32(input_scale).tobytes()


def _float_bytes(layer: Layer, arrays: list[np.ndarray]) -> bytes:
    out = b""
    for (_, tagged), a in zip(_reads(layer), arrays):
        out += (struct.pack("<I", FLOAT_TAG) if tagged else b"") + a.tobytes()
    return out


def _digest(w: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()


def float_in_variant(variant: Path, layers: list[Layer], arrays: list[list[np.ndarray]]) -> tuple[dict[str, str], int]:
    """The ncnn layers an int8-mixed ONNX variant keeps in float, found by their weights (pnnx
    renames every layer): the weighted ONNX nodes whose weights no DequantizeLinear feeds.
    Returns {layer: why} and how many such ONNX nodes there were."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(variant)).graph
    init = {t.name: t for t in graph.initializer}
    wanted: dict[str, str] = {}
    for node in float_weighted_nodes(graph):
        w = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
        wanted[_digest(w)] = node.name
        if w.ndim == 2:  # MatMul/Gemm keep [in, out]; ncnn's InnerProduct [out, in]
            wanted[_digest(w.T)] = node.name
    nodes = len(set(wanted.values()))
    found = {layer.name: f"float in the int8-mixed ONNX variant (node {wanted[_digest(a[0])]})"
             for layer, a in zip(layers, arrays) if layer.type in QUANTIZABLE and a and _digest(a[0]) in wanted}
    return found, nodes


def quantize(param: Path, weights: Path, feeds: list[dict[str, np.ndarray]], options: dict[str, Any],
             mirror: Path | None = None) -> dict[str, Any]:
    """Rewrite the fp32 model in int8, in place; returns what was quantized, what stayed float and
    why. ``mirror``: an int8-mixed ONNX variant whose float layers stay float here too."""
    method = str(options.get("calibration") or "entropy")
    if method not in METHODS:
        raise ConversionError(f"ncnn int8: calibration {method!r} is not one of {', '.join(METHODS)}")
    kinds = list(options.get("ncnn_layers") or DEFAULT_LAYERS)
    if not kinds or any(k not in QUANTIZABLE for k in kinds):
        raise ConversionError(f"ncnn int8: ncnn_layers {kinds!r} must name some of {', '.join(QUANTIZABLE)}")
    if not feeds:
        raise ConversionError("ncnn int8: the calibration set holds no sample")
    header, layers = read_param_text(param.read_text())
    arrays = split_weights(layers, weights.read_bytes())
    keep_float, mirrored = float_in_variant(mirror, layers, arrays) if mirror is not None else ({}, 0)
    kinds_of = {layer.name: layer.type for layer, a in zip(layers, arrays) if a}
    kept = {name: why for name, why in keep_float.items() if kinds_of.get(name) in kinds}
    chosen = {layer.name: layer.bottoms[0] for layer in layers if kinds_of.get(layer.name) in kinds
              and layer.name not in kept}
    thresholds = input_thresholds(param, weights, feeds, sorted(set(chosen.values())), method)
    per_channel = bool(options.get("per_channel", True))
    data, quantized = bytearray(), 0
    for layer, a in zip(layers, arrays):
        threshold = thresholds[chosen[layer.name]] if layer.name in chosen else 0.0
        if layer.name in chosen and threshold <= 0:
            kept[layer.name] = "its input was zero on every calibration sample"
        if threshold > 0:
            data += _quantized(layer, a, 127.0 / threshold, per_channel)
            layer.params[8] = "1"  # int8_scale_term: weight scales and an input scale follow the bias
            quantized += 1
        else:
            data += _float_bytes(layer, a)
    param.write_text("\n".join(header + [layer.line() for layer in layers]) + "\n")
    weights.write_bytes(bytes(data))
    return {"calibration": method, "calibration_samples": len(feeds), "per_channel": per_channel,
            "int8_layers": quantized, "int8_layer_types": kinds, "kept_float": kept,
            **({"float_onnx_nodes": mirrored} if mirror is not None else {})}

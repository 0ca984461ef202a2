"""MNN converter: a variant's ONNX -> one ``.mnn`` file, with MNN's own fp16 and int8 paths.

- fp32 (and any other float variant): MNNConvert on the variant's ONNX.
- fp16: MNNConvert ``--fp16`` on the fused fp32 ONNX. Only the weights are stored in half; the
  CPU computes fp32 unless the engine asks for precision "low" on a CPU with fp16 arithmetic
  (ARMv8.2+), so starting from the fp16 ONNX (with its Cast nodes) would only add work.
- int8 (and int8-mixed): MNNConvert the fused fp32 ONNX, then MNN's offline quantizer
  (``mnnquant``) calibrates on the variant's calibration samples, fed as raw tensors through
  its ``"input_type": "sequence"`` mode (one folder per sample, ``<input>.txt`` + ``input.json``):
  convolutions then compute in int8. Kept in float: the weighted ops the int8-mixed ONNX keeps
  in float, and those whose weights are too small for MNN's int8 scales (see
  ``_unquantizable_ops``). ``options["mnn_int8"] = "weights"`` asks for MNN's weight-only int8
  instead (``--weightQuantBits 8``: int8 storage, fp32 compute).

The same file serves every MNN backend: the target (cpu, opencl, vulkan...) only says where
the engine will run it, and the engine picks the backend when it loads the model.

The tools run in a subprocess (argv list, timeout) through MNN's ``_tools`` extension, not its
``mnnconvert``/``mnnquant`` console scripts: those import a telemetry logger that pip-installs
a package and posts the machine id to a remote service, and the 3.6.1 ``mnnquant`` script
passes its arguments in a form the extension rejects. Neither tool reports failure in its
exit status, so success is the output file being there.

The artifact carries how it was made in MNN's free-form ``bizCode`` field (``edgefarm:`` +
JSON: weight storage, compute, dynamic batch), which the agent's MNN engine reads to report
the precision the model really computes in.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.convert import WEIGHTED_OPS, ConversionError, Converter, ConvertInput, float_weighted_nodes, register

CONVERT_TIMEOUT_S = 600.0
QUANT_TIMEOUT_S = 3600.0  # the 640x640 detector takes ~1 min for 16 samples on one core
BIZ_PREFIX = "edgefarm:"
# The spec's calibration names -> MNN's feature quantization methods; MNN's own names pass too.
FEATURE_METHODS = {"entropy": "KL", "minmax": "EMA", "KL": "KL", "EMA": "EMA", "ADMM": "ADMM"}
WEIGHT_METHODS = ("MAX_ABS", "ADMM")
INFO_MARK = "EDGEFARM-MNN-INFO "

# Run in a fresh interpreter: MNN's C++ tools print, abort and leak at will.
_TOOL = r"""
import json, sys
import _tools
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "convert":
    _tools.mnnconvert(["mnnconvert"] + args)
elif cmd == "quant":
    _tools.mnnquant(["mnnquant"] + args)
elif cmd == "info":
    import MNN.nn
    info = MNN.nn.load_module_from_file(args[0], [], []).get_info()
    print(%r + json.dumps({"bizCode": info["bizCode"], "inputs": info["inputNames"],
                           "outputs": info["outputNames"]}), flush=True)
""" % INFO_MARK

# Lines of the tools' output worth quoting when they fail.
_BAD = re.compile(r"error|fail|not support|unsupport|exception|terminate|what\(\)|can't|cannot|abort", re.I)
_NOISE = re.compile(r"^The device supports:|^\[\d\d:\d\d:\d\d\] @ \d+: >>>")
_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*(@\s*)?[\w./]*:?\d*:?\s*")


@register
class MnnConverter(Converter):
    """ONNX -> .mnn with MNNConvert; int8 through mnnquant on the calibration samples."""

    engine = "mnn"
    suffix = ".mnn"
    version = 1
    targets = ("cpu", "opencl", "vulkan", "metal", "opengl", "cuda")

    def default_target(self, arch: str) -> str:
        return "cpu"  # every board has one; a GPU backend is asked for in the inventory

    def tool_versions(self) -> dict[str, str]:
        from importlib import metadata

        try:
            return {"mnn": metadata.version("MNN")}
        except metadata.PackageNotFoundError:
            raise ConversionError("MNN is not installed on the controller (pip install MNN)") from None

    def convert(self, inp: ConvertInput, out: Path) -> dict[str, Any]:
        if inp.target not in self.targets:
            raise ConversionError(f"mnn target {inp.target!r} is not one of {', '.join(self.targets)}")
        options = dict(inp.options or {})
        source, flags, meta = _plan(inp, options)
        meta = {"mnn": self.tool_versions()["mnn"], "target": inp.target, "variant": inp.variant,
                "backend": "chosen by the engine at load (option target/backend); same file for every target", **meta}
        info = _onnx_io(source)
        tag = {"weights": meta["weights"], "compute": "int8" if meta["compute"] == "int8" else "float",
               "dynamic_batch": info["dynamic_batch"]}
        biz = ["--bizCode", BIZ_PREFIX + json.dumps(tag, separators=(",", ":"))]
        timeout = float(options.get("timeout_s", CONVERT_TIMEOUT_S))
        with tempfile.TemporaryDirectory(prefix="edgefarm-mnn-") as tmp:
            work = Path(tmp)
            model = work / "model.mnn"
            _convert(source, "ONNX", model, flags + biz, timeout)
            if meta["compute"] == "int8":
                if inp.calibration is None:
                    raise ConversionError(f"mnn int8 conversion of {inp.variant} needs calibration samples, got none")
                skip = {str(n): "asked for in the options" for n in options.get("skip_quant_ops", [])}
                if inp.model != inp.fp32:
                    # int8-mixed: what the ONNX variant keeps in float, MNN keeps in float too.
                    skip.update((n, "float in the variant's ONNX") for n in _float_compute_ops(inp.model))
                skip.update((n, why) for n, why in _unquantizable_ops(inp.fp32).items() if n not in skip)
                quantized = work / "int8.mnn"
                meta.update(_quantize(model, quantized, inp.calibration, work / "calibration", options, skip))
                model = quantized
            got = _module_info(model)
            if not got["bizCode"].startswith(BIZ_PREFIX):
                # EMA calibration saves a new graph without the tag: stamp it again. Level 0 runs
                # no optimization on an MNN source, so the model itself is saved as it is.
                stamped = work / "stamped.mnn"
                _convert(model, "MNN", stamped, ["--optimizeLevel", "0", *biz], timeout)
                model, got = stamped, _module_info(stamped)
            # The engine returns outputs in MNN's order: it must be the ONNX order (inputs go by name).
            if got["outputs"] != info["outputs"] or set(got["inputs"]) != set(info["inputs"]):
                raise ConversionError(
                    f"mnn model has inputs {got['inputs']} and outputs {got['outputs']}, "
                    f"the ONNX model {info['inputs']} and {info['outputs']}")
            if not got["bizCode"].startswith(BIZ_PREFIX):
                raise ConversionError(f"mnn model lost its bizCode tag (has {got['bizCode']!r})")
            shutil.copyfile(model, out)
        meta["size_bytes"] = out.stat().st_size
        return meta


def _plan(inp: ConvertInput, options: dict[str, Any]) -> tuple[Path, list[str], dict[str, Any]]:
    """Which ONNX to convert, MNNConvert's flags, and what the result stores and computes."""
    if inp.precision == "fp32":
        return inp.model, [], {"source": "variant", "weights": "fp32", "compute": "fp32"}
    if inp.precision == "fp16":
        return inp.fp32, ["--fp16"], {
            "source": "fp32", "weights": "fp16",
            "compute": "fp32; fp16 only with engine precision 'low' on a CPU with fp16 arithmetic"}
    if inp.precision == "int8":
        mode = str(options.get("mnn_int8", "full"))
        if mode == "weights":
            return inp.fp32, ["--weightQuantBits", "8"], {
                "source": "fp32", "weights": "int8", "compute": "fp32", "quantization": "weights only"}
        if mode == "full":
            return inp.fp32, [], {"source": "fp32", "weights": "int8", "compute": "int8",
                                  "quantization": "full (mnnquant)"}
        raise ConversionError(f"mnn_int8 option {mode!r} is not 'full' or 'weights'")
    raise ConversionError(f"mnn converter has no path for precision {inp.precision!r} (variant {inp.variant})")


def _onnx_io(path: Path) -> dict[str, Any]:
    """Input and output names of an ONNX file, and whether its first input's batch is dynamic."""
    graph = _graph(path)
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return {"inputs": [i.name for i in inputs], "outputs": [o.name for o in graph.output],
            "dynamic_batch": bool(dims) and dims[0].dim_value <= 0}


# MNN's quantizer treats a per-channel weight scale (max |w| / 127) at or below 1e-6 as zero and
# drops that channel's bias (tools/quantization/quantizeWeight.cpp); its weight-only int8 breaks
# on the same channels. Weights below 1e-6 are taken as dead channels, which lose nothing.
MNN_MIN_SCALE = 1e-6
DEAD_WEIGHT = 1e-6
# What MNN fuses into a convolution, taking the fused op's name: a bias Add, a BatchNorm.
_FUSED_AFTER = ("Add", "BatchNormalization")


def _graph(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError, OSError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(f"mnn converter cannot read {path.name} as ONNX: {first}") from None


def _mnn_names(graph: Any, node: Any) -> list[str]:
    """The names MNN may give the op made from ``node``: MNN names an op after its output, which
    after fusion is the output of the bias Add or BatchNorm that follows."""
    names = [node.output[0]]
    users = [n for n in graph.node if node.output[0] in n.input]
    if len(users) == 1 and users[0].op_type in _FUSED_AFTER:
        names.append(users[0].output[0])
    return names


def _unquantizable_ops(fp32: Path) -> dict[str, str]:
    """MNN op names of the weighted ops with live channels too small for MNN's int8 scales.

    On PP-OCRv4 det a BatchNorm folded into a 3x3 convolution leaves weights of 6e-5..1.3e-4
    that meet activations of ~3e3: quantized, the detector finds no text (hmean 0); kept in
    float, hmean stays within 0.03 of fp32.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = _graph(fp32)
    weights = {t.name: t for t in graph.initializer}
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        if w.ndim < 2:
            continue
        if node.op_type == "ConvTranspose":
            w = np.moveaxis(w, 1, 0)  # [in, out/groups, k...]: output channels second
        elif node.op_type == "MatMul" or (node.op_type == "Gemm" and not _attr(node, "transB", 0)):
            w = w.reshape(-1, w.shape[-1]).T  # [in, out]
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        lost = int(((peak > DEAD_WEIGHT) & (peak / 127.0 <= MNN_MIN_SCALE)).sum())
        if lost:
            why = f"{lost} of {peak.size} channels have weights under {127 * MNN_MIN_SCALE:.2g}"
            found.update((name, why) for name in _mnn_names(graph, node))
    return found


def _float_compute_ops(variant: Path) -> list[str]:
    """MNN op names of the weighted ops a QDQ variant left in float (weights not dequantized)."""
    graph = _graph(variant)
    return [name for node in float_weighted_nodes(graph) for name in _mnn_names(graph, node)]


def _attr(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _convert(source: Path, framework: str, out: Path, flags: list[str], timeout: float) -> None:
    text = _run(["convert", "-f", framework, "--modelFile", str(source), "--MNNModel", str(out), *flags],
                timeout, "MNNConvert", source.name)
    if not out.is_file() or out.stat().st_size == 0:
        raise ConversionError(f"MNNConvert failed on {source.name}: {_reason(text)}")


def _quantize(src: Path, out: Path, calibration: Path, folder: Path, options: dict[str, Any],
              skip: dict[str, str]) -> dict[str, Any]:
    """mnnquant on the calibration samples; returns what it did for the meta."""
    name = str(options.get("mnn_feature_method") or options.get("calibration") or "entropy")
    if name not in FEATURE_METHODS:
        raise ConversionError(f"mnn cannot calibrate with {name!r}; use one of {', '.join(FEATURE_METHODS)}")
    weight_method = str(options.get("mnn_weight_method", "MAX_ABS"))
    if weight_method not in WEIGHT_METHODS:
        raise ConversionError(f"mnn weight method {weight_method!r} is not one of {', '.join(WEIGHT_METHODS)}")
    count = _write_samples(calibration, folder)
    config = {
        "path": str(folder) + "/",
        "used_sample_num": count,
        "input_type": "sequence",
        "feature_quantize_method": FEATURE_METHODS[name],
        "weight_quantize_method": weight_method,
        "quant_bits": 8,
        # Sequence input builds one sample per step: a larger EMA batch would use only its last.
        "batch_size": 1,
        "skip_quant_op_names": sorted(skip),
    }
    config_path = folder.parent / "quant.json"
    config_path.write_text(json.dumps(config, indent=1))
    text = _run(["quant", str(src), str(out), str(config_path)],
                float(options.get("quant_timeout_s", QUANT_TIMEOUT_S)), "mnnquant", src.name)
    if not out.is_file() or out.stat().st_size == 0:
        raise ConversionError(f"mnnquant failed on {src.name}: {_reason(text)}")
    method = config["feature_quantize_method"]
    if "use EMA quantize method instead" in text:
        method = "EMA"  # MNN switches to EMA by itself when a BatchNorm is left in the graph
    done = {"calibration": name, "feature_method": method, "weight_method": weight_method,
            "calibration_samples": count, "kept_float": skip}
    if method == "EMA" and skip:
        # MNN's EMA path quantizes the whole graph and never reads skip_quant_op_names.
        done.update(kept_float={}, not_kept_float=skip)
    return done


def _write_samples(calibration: Path, folder: Path) -> int:
    """The dataset's model-ready samples as mnnquant's sequence input: a folder per sample."""
    import numpy as np

    from agent.dataset import load_dataset

    data = load_dataset(str(calibration))
    if data.count < 1:
        raise ConversionError(f"calibration file {calibration.name} holds no sample")
    for i in range(data.count):
        sample = folder / f"{i:05d}"
        sample.mkdir(parents=True)
        tensors = data.batch([i])
        for name, array in tensors.items():
            if "/" in name or name in (".", ".."):
                # mnnquant reads each input from <name>.txt in the sample's folder.
                raise ConversionError(f"mnn cannot calibrate input {name!r}: the name is not a file name")
            # 9 significant digits: every float32 comes back exactly.
            np.ascontiguousarray(array, dtype=np.float32).ravel().tofile(str(sample / f"{name}.txt"), sep=" ", format="%.9g")
        shapes = [{"name": name, "shape": [int(d) for d in array.shape]} for name, array in tensors.items()]
        (sample / "input.json").write_text(json.dumps({"inputs": shapes}))
    return data.count


def _module_info(path: Path) -> dict[str, Any]:
    text = _run(["info", str(path)], CONVERT_TIMEOUT_S, "MNN", path.name)
    for line in text.splitlines():
        if line.startswith(INFO_MARK):
            return json.loads(line[len(INFO_MARK):])
    raise ConversionError(f"MNN cannot load the converted {path.name}: {_reason(text)}")


def _run(args: list[str], timeout: float, tool: str, what: str) -> str:
    """Run one MNN tool command in a subprocess; its stdout and stderr as one text."""
    try:
        proc = subprocess.run([sys.executable, "-c", _TOOL, *args], capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{tool} on {what} did not finish in {timeout:.0f} s") from None
    text = (proc.stdout or "") + "\n" + (proc.stderr or "")
    if proc.returncode != 0:
        if "No module named '_tools'" in text or "No module named 'MNN'" in text:
            raise ConversionError("MNN is not installed on the controller (pip install MNN)")
        raise ConversionError(f"{tool} on {what} exited with {_exit(proc.returncode)}: {_reason(text)}")
    return text


def _exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


def _reason(text: str) -> str:
    """The tool's complaint on one line: its error lines, else its last line."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not _NOISE.search(ln.strip())]
    bad = [_PREFIX.sub("", ln) for ln in lines if _BAD.search(ln)]
    picked = list(dict.fromkeys(bad))[-3:] or lines[-1:] or ["no output"]
    return "; ".join(picked)[:400]

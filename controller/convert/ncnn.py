"""ncnn converter: a variant's ONNX -> pnnx -> ncnn ``.param`` + ``.bin``, packed as one ``.tar``.

pnnx (the pnnx wheel's own executable, run as a subprocess) is the converter ncnn ships today;
the older ``onnx2ncnn`` is in neither the ncnn nor the pnnx wheel, and Debian bookworm has no
ncnn package, so pnnx is the only route here. pnnx names the ncnn blobs ``in0, in1...`` and
``out0, out1...`` in the ONNX graph's input and output order; the tar carries
``model.param``, ``model.bin`` and ``model.names.json`` (ONNX name <-> ncnn blob, and the ONNX
shapes at batch 1), so the board feeds the inputs by their ONNX names and gets the outputs in
their ONNX shapes back. ncnn has no batch axis: the model runs at batch 1.

Precisions: fp32 converts the variant's model. fp16 is ncnn's own: it converts the fused fp32
model (the fp16 ONNX variant's Cast nodes would only get in its way) and the engine turns fp16
storage and arithmetic on at load, where ncnn halves the weights of the layers it has fp16
kernels for. The .bin keeps fp32 weights either way (pnnx ``fp16=0``): pnnx's own ``fp16=1``
flushes weights below fp16's smallest normal (6.1e-5) to zero, which zeroes a whole
convolution of the PP-OCRv4 detector (|w| <= 2.4e-4) and ruins its output. int8 is ncnn's own
too: the fused fp32 model converted, then calibrated on the variant's calibration samples and
rewritten with int8 weights and scales (controller/convert/ncnn_int8.py, in place of the
ncnn2table and ncnn2int8 tools no package ships); int8-mixed keeps in float the layers its
ONNX variant keeps in float.

Targets: "cpu" and "vulkan"; the files are the same for both (the engine picks the device), the
target only keeps the cache entries and the job records apart.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from controller.convert import ConversionError, Converter, ConvertInput, ncnn_int8, pack, register

TARGETS = ("cpu", "vulkan")
CONVERT_TIMEOUT_S = 900.0
PARAM_MAGIC = "7767517"
# The member names the engine (agent/engines/ncnn.py) looks for beside the .param.
PARAM, BIN, NAMES = "model.param", "model.bin", "model.names.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pnnx_executable() -> Path:
    """The pnnx binary inside the pnnx wheel, found without importing the package (which imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("pnnx is not installed: pip install pnnx")
    exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    if not exe.is_file():
        raise ConversionError(f"the pnnx package has no pnnx executable: {exe} is missing")
    return exe


@register
class NcnnConverter(Converter):
    """pnnx ONNX -> ncnn, validated by loading and running the result once in ncnn."""

    engine = "ncnn"
    suffix = ".tar"
    version = 2  # 2: int8
    targets = TARGETS

    def default_target(self, arch: str) -> str:
        return "cpu"  # Vulkan only when the inventory asks for it: a board's GPU may be absent or slower

    def tool_versions(self) -> dict[str, str]:
        versions = {}
        for package in ("pnnx", "ncnn"):
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                raise ConversionError(f"{package} is not installed: pip install {package}") from None
        return versions

    def convert(self, inp: ConvertInput, out: Path) -> dict[str, Any]:
        target = inp.target or "cpu"
        if target not in TARGETS:
            raise ConversionError(f"ncnn target {target!r} is not one of {', '.join(TARGETS)}")
        if inp.precision not in ("fp32", "fp16", "int8"):
            raise ConversionError(f"ncnn converter has no route for precision {inp.precision!r} (variant {inp.variant})")
        if inp.precision == "int8" and inp.calibration is None:
            raise ConversionError(f"ncnn int8 conversion of {inp.variant} needs calibration samples, got none")
        # fp16 and int8 are ncnn's own: they start from the fused fp32 model.
        own = inp.precision != "fp32"
        source = inp.fp32 if own else inp.model
        inputs, outputs = _io_of(source)

        with tempfile.TemporaryDirectory(prefix="edgefarm-ncnn-") as tmp:
            work = Path(tmp)
            # pnnx writes side files (pnnxsim.onnx...) beside its input: keep them all in here.
            model = work / "model.onnx"
            shutil.copyfile(source, model)
            param, weights = work / PARAM, work / BIN
            shapes = ",".join("[" + ",".join(str(d) for d in i["shape"]) + "]f32" for i in inputs)
            argv = [str(pnnx_executable()), str(model), f"inputshape={shapes}", "fp16=0",
                    "device=cpu", f"ncnnparam={param}", f"ncnnbin={weights}", f"ncnnpy={work / 'model_ncnn.py'}",
                    f"pnnxparam={work / 'model.pnnx.param'}", f"pnnxbin={work / 'model.pnnx.bin'}",
                    f"pnnxpy={work / 'model_pnnx.py'}", f"pnnxonnx={work / 'model.pnnx.onnx'}"]
            _run(argv, work)
            layers = _check_param(param, len(inputs), len(outputs))
            quantization: dict[str, Any] = {}
            if inp.precision == "int8" and inp.calibration is not None:  # refused above without calibration
                quantization = ncnn_int8.quantize(param, weights, _feeds(inp.calibration, inputs), inp.options,
                                                  mirror=inp.model if inp.model != inp.fp32 else None)
            names = work / NAMES
            names.write_text(json.dumps({
                "inputs": [{**i, "blob": f"in{n}"} for n, i in enumerate(inputs)],
                "outputs": [{**o, "blob": f"out{n}"} for n, o in enumerate(outputs)],
                "precision": inp.precision,
            }, indent=1, sort_keys=True))
            _trial_run(param, weights, inputs, outputs)
            out.parent.mkdir(parents=True, exist_ok=True)
            pack([param, weights, names], out)  # the .param first: the board loads the first member
            bin_bytes = weights.stat().st_size
        return {
            "route": "pnnx",
            "target": target,
            "precision": inp.precision,
            "source": "fp32" if own else inp.variant,
            # pnnx fp16=0: its fp16=1 flushes small weights to zero
            "weights": "int8 (quantized layers), fp32 (the rest)" if quantization else "fp32",
            # fp16 happens at load: the engine sets opt.use_fp16_storage/packed/arithmetic from model_precision.
            "runtime_fp16": inp.precision == "fp16",
            **quantization,
            "inputs": {i["name"]: f"in{n}" for n, i in enumerate(inputs)},
            "outputs": {o["name"]: f"out{n}" for n, o in enumerate(outputs)},
            "layers": layers,
            "bin_bytes": bin_bytes,
            "tools": self.tool_versions(),
        }


def _io_of(source: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's float inputs and outputs with their shapes at batch 1 (a symbolic batch axis is 1).

    Output shapes come from one ONNX Runtime run on zeros: exporters leave symbolic output dims
    (the rec model's sequence length) that shape inference does not resolve."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX
        raise ConversionError(f"ncnn conversion cannot read {source.name} as ONNX: {_first_line(exc)}") from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in (i for i in model.graph.input if i.name not in initializers):
        tensor = value.type.tensor_type
        if tensor.elem_type != TensorProto.FLOAT:
            raise ConversionError(f"ncnn takes float32 inputs; input {value.name!r} is "
                                  f"{TensorProto.DataType.Name(tensor.elem_type).lower()}")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        if dims and dims[0] is None:
            dims[0] = 1  # ncnn has no batch axis
        if not dims or None in dims or dims[0] != 1:
            raise ConversionError(f"ncnn conversion needs static shapes at batch 1; input {value.name!r} is "
                                  f"{['?' if d is None else d for d in dims]}")
        inputs.append({"name": value.name, "shape": dims})
    if not inputs:
        raise ConversionError("ncnn conversion needs a model with at least one input")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    feeds = {i["name"]: np.zeros(i["shape"], dtype=np.float32) for i in inputs}
    try:
        session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception as exc:  # ORT's own errors: its message says what is wrong with the model
        raise ConversionError(f"ncnn conversion: onnxruntime cannot run {source.name} at batch 1 to learn "
                              f"its output shapes: {_first_line(exc)}") from None
    outputs = []
    for name, value in zip(names, values):
        if value.dtype != np.float32:
            raise ConversionError(f"ncnn gives float32 outputs; output {name!r} is {value.dtype}")
        outputs.append({"name": name, "shape": [int(d) for d in value.shape]})
    return inputs, outputs


def _feeds(calibration: Path, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calibration samples as ncnn feeds: input blob (in0..) -> CHW array, batch axis dropped."""
    from agent.dataset import load_dataset

    data = load_dataset(str(calibration))
    names = [i["name"] for i in inputs]
    missing = [n for n in names if n not in data.input_names]
    if missing:
        raise ConversionError(f"calibration file {calibration.name} has no input {missing[0]!r}")
    return [{f"in{n}": data.batch([i])[name][0] for n, name in enumerate(names)} for i in range(data.count)]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _run(argv: list[str], cwd: Path) -> None:
    """Run pnnx; a non-zero exit becomes a ConversionError with its last message line."""
    try:
        proc = subprocess.run(argv, cwd=str(cwd), capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"pnnx took longer than {CONVERT_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        lines = [_ANSI.sub("", ln).strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines()]
        lines = [ln for ln in lines if ln]
        message = lines[-1] if lines else "no output"
        raise ConversionError(f"pnnx failed (exit code {proc.returncode}): {message[:400]}")


def _check_param(param: Path, n_inputs: int, n_outputs: int) -> int:
    """Refuse a .param ncnn cannot load (pnnx keeps ops it cannot map as layers ncnn lacks) or whose
    blobs are not in0.. / out0..; returns the layer count."""
    import ncnn

    if not param.is_file():
        raise ConversionError("pnnx wrote no ncnn .param file")
    lines = [ln.split() for ln in param.read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != [PARAM_MAGIC] or len(lines) < 2:
        raise ConversionError(f"pnnx wrote a .param without the ncnn magic number {PARAM_MAGIC}")
    unknown = [f"{row[0]} ({row[1]})" for row in lines[2:] if ncnn.layer_to_index(row[0]) < 0]
    if unknown:
        raise ConversionError(f"ncnn has no layer for {', '.join(unknown[:5])}: pnnx could not map "
                              f"{'this op' if len(unknown) == 1 else f'{len(unknown)} ops'} to ncnn")
    blobs_in = [row[1] for row in lines[2:] if row[0] == "Input"]
    produced = set()
    for row in lines[2:]:
        bottoms, tops = int(row[2]), int(row[3])
        produced.update(row[4 + bottoms: 4 + bottoms + tops])
    want_in = [f"in{n}" for n in range(n_inputs)]
    want_out = [f"out{n}" for n in range(n_outputs)]
    if blobs_in != want_in or not set(want_out) <= produced:
        raise ConversionError(f"pnnx's ncnn blobs are inputs {blobs_in} and not all of outputs {want_out}; "
                              f"the ONNX model has {n_inputs} inputs and {n_outputs} outputs")
    return len(lines) - 2


def _trial_run(param: Path, weights: Path, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    """Load and run the model once on zeros in fp32, so a model ncnn cannot run or whose outputs do
    not have the ONNX sizes fails here, with a reason, rather than on every board."""
    import ncnn
    import numpy as np

    net = ncnn.Net()
    try:
        net.opt.num_threads = 1
        net.opt.use_vulkan_compute = False
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise ConversionError("ncnn could not load the .param/.bin pnnx wrote")
        with net.create_extractor() as ex:
            for n, spec in enumerate(inputs):
                ex.input(f"in{n}", ncnn.Mat(np.zeros(spec["shape"][1:] or [1], dtype=np.float32)).clone())
            for n, spec in enumerate(outputs):
                code, mat = ex.extract(f"out{n}")
                if code != 0:
                    raise ConversionError(f"ncnn failed to compute output {spec['name']!r} (out{n}): error {code}")
                size, want = np.array(mat).size, int(np.prod(spec["shape"]))
                if size != want:
                    raise ConversionError(f"ncnn output {spec['name']!r} has {size} values, the ONNX shape "
                                          f"{spec['shape']} has {want}")
    finally:
        net.clear()

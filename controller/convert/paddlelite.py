"""Paddle Lite converter: a variant's ONNX -> x2paddle -> Paddle inference model -> opt -> ``.nb``.

x2paddle, paddlepaddle and Paddle Lite's opt live in their own interpreter (Paddle Lite's wheels
stop at Python 3.10; paddlepaddle 2.6 needs numpy < 2): ``$EDGEFARM_PADDLE_PYTHON``, else
``.venv-paddle/bin/python`` beside the controller's venv. The controller prepares the ONNX here
(batch fixed at 1, constants folded, names x2paddle can turn into Python identifiers) and runs
``_x2paddle_tool.py`` there as a subprocess. The artifact is a tar: ``model.nb``, then
``model.nb.json`` with what a .nb does not tell the board before it is fed (input names and
shapes, target, precision, the kernels opt chose).

Precisions: fp32 converts the fused fp32 model for any target. fp16 is opt's own
(enable_fp16) and exists for ARM only; the x86 and OpenCL back ends have no fp16 kernels, and the
pip wheel's opt (an x86 build) ignores enable_fp16 too, so an fp16 .nb is refused unless opt
really made fp16 kernels. int8 is Paddle's own post-training quantization of the fp32 model on
the variant's calibration samples (x2paddle cannot read the ONNX QDQ variant), then opt's int8
kernels: for ARM and NNAdapter targets; x86 int8 .nb files crash Paddle Lite 2.13, so refused.
"""

from __future__ import annotations

import functools
import json
import keyword
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from controller.convert import ConversionError, Converter, ConvertInput, pack, register

TOOL = Path(__file__).with_name("_x2paddle_tool.py")
# Paddle Lite's valid_targets: its own CPU/GPU back ends, then NNAdapter devices (each is given
# with the board CPU's back end, e.g. "rockchip_npu,arm", for the ops the device lacks).
CPU_TARGETS = ("x86", "arm")
TARGETS = (
    "x86", "arm", "opencl",
    "huawei_ascend_npu", "huawei_kirin_npu", "rockchip_npu", "amlogic_npu", "imagination_nna",
    "mediatek_apu", "verisilicon_timvx", "kunlunxin_xtcl", "cambricon_mlu", "android_nnapi",
    "nvidia_tensorrt", "intel_openvino", "qualcomm_qnn", "eeasytech_npu",
)
FP16_TARGETS = ("arm",)  # opt's enable_fp16 is ARM-only: x86 and OpenCL have no fp16 kernels here
# The spec's calibration methods (controller.passes) -> Paddle's PTQ algorithms.
# Paddle Lite's int8 is symmetric: min-max is Paddle's abs_max. Paddle's KL (the entropy method)
# searches every activation in Python: over 200 s for the small cls model on 2 cores, more than
# the conversion timeout for the detector, so entropy gets Paddle's histogram percentile (seconds).
# The option "paddle_ptq_algo" (KL, hist, mse, avg, abs_max, min_max) overrides the mapping.
PTQ_ALGOS = {"entropy": "hist", "minmax": "abs_max", "percentile": "hist"}
CONVERT_TIMEOUT_S = 900.0
VERSIONS_TIMEOUT_S = 120.0
_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARCH_TARGET = {"x86_64": "x86", "amd64": "x86", "i686": "x86", "i386": "x86",
                "aarch64": "arm", "arm64": "arm", "armv7l": "arm", "armv8l": "arm", "armv7": "arm"}


def _require_tool() -> Path:
    from controller.workspace import paddle_python

    python = paddle_python()
    if python is None or not python.is_file():
        raise ConversionError(
            f"Paddle tool interpreter not found ({python or '.venv-paddle beside the controller venv'}); run "
            "scripts/setup.sh (it makes .venv-paddle with x2paddle, paddlepaddle and paddlelite) or set "
            "EDGEFARM_PADDLE_PYTHON")
    return python


def sanitize_names(model: Any) -> dict[str, str]:
    """Rename every value and node of ``model`` (an onnx.ModelProto, in place) to [A-Za-z0-9_]
    names x2paddle can turn into Python identifiers ('@', '.', '/' break its generated code).

    Names already safe stay, so the inputs the agent feeds by name ('x') keep their names;
    renamed ones never collide with another name. Returns {old: new} for the renamed values.
    """
    graphs = list(_graphs(model.graph))
    values: list[str] = []
    for g in graphs:
        values += [v.name for v in (*g.input, *g.output, *g.value_info)]
        values += [t.name for t in g.initializer] + [t.values.name for t in g.sparse_initializer]
        for node in g.node:
            values += [*node.input, *node.output]
    taken = {n for n in values if _is_safe(n)}
    mapping: dict[str, str] = {}
    for name in values:
        if name and not _is_safe(name) and name not in mapping:
            mapping[name] = _fresh(name, taken)

    def rename(name: str) -> str:
        return mapping.get(name, name)

    node_names = {n.name for g in graphs for n in g.node if _is_safe(n.name)}
    for g in graphs:
        for v in (*g.input, *g.output, *g.value_info):
            v.name = rename(v.name)
        for t in g.initializer:
            t.name = rename(t.name)
        for s in g.sparse_initializer:
            s.values.name = rename(s.values.name)
            s.indices.name = rename(s.indices.name)
        for node in g.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            if not _is_safe(node.name):
                node.name = _fresh(node.name or node.op_type, node_names)
    return mapping


def _is_safe(name: str) -> bool:
    return bool(_SAFE.match(name)) and not keyword.iskeyword(name)


def _fresh(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not base or not (base[0].isalpha() or base[0] == "_"):
        base = "v_" + base
    candidate, n = base, 1
    while candidate in taken or keyword.iskeyword(candidate):
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _graphs(graph: Any):
    """The graph and every subgraph (If/Loop/Scan bodies) under it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def fix_batch(model: Any, batch: int = 1) -> None:
    """Give every symbolic input dimension ``batch`` (only the batch axis is left symbolic by
    controller.build.source.prepare): x2paddle and opt want static shapes, and a .nb runs at batch 1."""
    from onnx import shape_inference

    initializers = {t.name for t in model.graph.initializer}
    changed = False
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = batch
                changed = True
    if changed:  # the old intermediate shapes still say "batch"
        del model.graph.value_info[:]
        inferred = shape_inference.infer_shapes(model)
        model.graph.value_info.extend(inferred.graph.value_info)


def plain_samples(dataset: Path, out: Path) -> Path:
    """A dataset .npz (uint8 images + normalisation, agent.protocol's layout) as the float
    tensors the model is fed, input name -> [N, ...]: the Paddle tool imports nothing of ours."""
    import numpy as np

    from agent.dataset import load_dataset

    data = load_dataset(str(dataset), require_task=False)
    batch = data.batch(list(range(data.count)))
    arrays: dict[str, Any] = {name: np.ascontiguousarray(batch[name]) for name in data.input_names}
    np.savez(out, **arrays)
    return out


def fold_constants(src: Path, out: Path) -> Path:
    """ONNX Runtime's basic level on the fixed-shape model: Shape -> Slice -> Concat chains that
    only a dynamic batch kept alive become constants. x2paddle maps a Reshape whose shape is
    computed at run time wrongly (PP-OCRv4's recogniser then fails to export)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types from C++
        raise ConversionError(f"onnxruntime cannot fold constants of {src.name}: {str(exc).strip().splitlines()[0][:300]}") from None
    return out


@register
class PaddleLiteConverter(Converter):
    """x2paddle + Paddle Lite opt, in the Paddle tool interpreter."""

    engine = "paddlelite"
    suffix = ".tar"  # model.nb, then model.nb.json: what the .nb cannot tell the board (input shapes)
    version = 1
    targets = TARGETS

    def default_target(self, arch: str) -> str:
        return _ARCH_TARGET.get(arch.strip().lower(), "arm" if arch.lower().startswith("arm") else "x86")

    def tool_versions(self) -> dict[str, str]:
        return dict(_tool_versions(str(_require_tool())))

    def convert(self, inp: ConvertInput, out: Path) -> dict[str, Any]:
        import onnx

        target = inp.target or "x86"
        places = _valid_places(target)
        fp16, int8 = inp.precision == "fp16", inp.precision == "int8"
        if fp16 and not set(places) & set(FP16_TARGETS):
            raise ConversionError(
                f"Paddle Lite has no fp16 kernels for target {target!r}; fp16 (opt --enable_fp16) needs target arm"
            )
        if int8:
            if inp.variant != "int8":
                raise ConversionError(
                    f"variant {inp.variant!r} has no Paddle Lite counterpart: its int8 is Paddle's own "
                    "post-training quantization of the whole fp32 model (variant int8)"
                )
            if "x86" in places:
                raise ConversionError(
                    "Paddle Lite 2.13's x86 int8 kernels crash (SIGSEGV) on a quantized PaddleOCR model; "
                    "int8 needs target arm or an NNAdapter device"
                )
            if inp.calibration is None:
                raise ConversionError("Paddle Lite int8 needs calibration samples; the int8 variant has none")
        # fp16 and int8 are Paddle Lite's own, from the fp32 model: x2paddle reads no ONNX QDQ
        # (QuantizeLinear/DequantizeLinear), and an ONNX fp16 model's Casts would only get in opt's way.
        source = inp.fp32 if fp16 or int8 else inp.model
        python = _require_tool()
        with tempfile.TemporaryDirectory(prefix="edgefarm-paddle-") as tmp:
            work = Path(tmp)
            model = onnx.load(str(source))
            # The .nb gets back the original input names: the board feeds it by them.
            initializers = {t.name for t in model.graph.initializer}
            inputs = [i.name for i in model.graph.input if i.name not in initializers]
            outputs = [o.name for o in model.graph.output]
            fix_batch(model, 1)
            onnx.save(model, str(work / "fixed.onnx"))
            model = onnx.load(str(fold_constants(work / "fixed.onnx", work / "folded.onnx")))
            renamed = sanitize_names(model)
            clean = work / "model.onnx"
            onnx.save(model, str(clean))
            result_file = work / "result.json"
            nb = work / "model.nb"
            argv = [str(python), "-I", str(TOOL), "convert", "--onnx", str(clean), "--work", str(work),
                    "--target", ",".join(places), "--out", str(nb), "--result", str(result_file),
                    "--input-names", json.dumps(inputs)]
            if fp16:
                argv.append("--fp16")
            algo = None
            if int8:
                assert inp.calibration is not None
                algo = str(inp.options.get("paddle_ptq_algo")
                           or PTQ_ALGOS.get(str(inp.options.get("calibration", "entropy")), "hist"))
                argv += ["--calibration", str(plain_samples(inp.calibration, work / "calibration.npz")),
                         "--algo", algo]
            _run(argv, CONVERT_TIMEOUT_S)
            result = json.loads(result_file.read_text())
            # The board reads outputs by position: x2paddle must keep them one for one.
            if len(result["outputs"]) != len(outputs):
                raise ConversionError(
                    f"x2paddle made {len(result['outputs'])} outputs from {len(outputs)} ONNX outputs {outputs}"
                )
            feeds = [{"name": name, "shape": i["shape"]} for name, i in zip(inputs, result["inputs"])]
            precision = inp.precision
            # A .nb tells its input shapes only once fed: the board reads them here, so it knows
            # the batch is fixed (x2paddle bakes reshape targets; another batch would be wrong).
            sidecar = work / "model.nb.json"
            sidecar.write_text(json.dumps({
                "inputs": feeds, "outputs": outputs, "target": ",".join(places), "precision": precision,
                "made_by": "edgefarm x2paddle + paddle_lite_opt", "tools": result["versions"],
                "kernels": result["kernels"],
            }, indent=1, sort_keys=True))
            out.parent.mkdir(parents=True, exist_ok=True)
            pack([nb, sidecar], out)
        return {
            "target": ",".join(places),
            "precision": precision,
            "source": "fp32" if fp16 or int8 else inp.variant,
            "kernels": result["kernels"],
            "ptq_algo": algo,
            "renamed_values": len(renamed),
            "inputs": feeds,
            "paddle_outputs": result["outputs"],
            "onnx_outputs": outputs,
            "tools": result["versions"],
        }


def _valid_places(target: str) -> list[str]:
    """``target`` as opt's valid places: an NNAdapter device alone gets the CPU back end added."""
    places = [p.strip() for p in target.split(",") if p.strip()]
    unknown = [p for p in places if p not in TARGETS]
    if not places or unknown:
        raise ConversionError(f"Paddle Lite target {target!r} is not one of {', '.join(TARGETS)}")
    if not any(p in CPU_TARGETS for p in places):
        places.append("arm")  # the device's kernels fall back to ARM ones for the ops they lack
    return places


@functools.lru_cache(maxsize=4)
def _tool_versions(python: str) -> tuple[tuple[str, str], ...]:
    with tempfile.TemporaryDirectory(prefix="edgefarm-paddle-") as tmp:
        result = Path(tmp) / "versions.json"
        _run([python, "-I", str(TOOL), "versions", "--result", str(result)], VERSIONS_TIMEOUT_S)
        return tuple(sorted(json.loads(result.read_text()).items()))


def _run(argv: list[str], timeout: float) -> None:
    """Run the tool; its "error: ..." line (or what it printed last) becomes the ConversionError."""
    # -I (isolated) keeps the controller's PYTHONPATH and this folder, whose paddlelite.py would
    # shadow the paddlelite package, out of the tool's sys.path.
    # PYTHONHASHSEED: Paddle's quantization passes walk sets; a fixed order gives the same .nb
    # for the same input, which the content cache relies on.
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONHASHSEED="0")
    try:  # one stream, so a C++ message stays before the crash report that follows it
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"Paddle conversion took longer than {timeout:.0f} s: {' '.join(argv[2:4])}") from None
    if proc.returncode != 0:
        raise ConversionError(f"paddlelite conversion failed: {tool_message(proc.stdout, proc.returncode)}")


def tool_message(output: str, returncode: int) -> str:
    """The line that says why the tool failed: its own "error: ..." line, else a glog fatal line,
    else the last line before paddle's crash report (C++ traceback, signal summary)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for n, line in enumerate(lines):
        if line.startswith("C++ Traceback") or line.startswith("Error Message Summary"):
            lines = [ln for ln in lines[:n] if not ln.startswith("---")]
            break
    errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    fatal = [re.sub(r"^\[F [^\]]*\]\s*", "", ln) for ln in lines if ln.startswith("[F ")]
    message = (errors or fatal or lines or [f"exit code {returncode}"])[-1]
    if returncode < 0:
        message += f" (killed by signal {-returncode})"
    return message[:400]

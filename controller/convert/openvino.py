"""OpenVINO converter: a variant's ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), packed as one tar.

The agent's OpenVINO engine reads ONNX too, but then converts the graph at every load; the IR
is that conversion done once on the controller, so a board only deserializes it.

- Float variants (fp32, fp16, pruned...): ``ov.convert_model`` on the variant's ONNX, which also
  runs OpenVINO's offline graph transformations, so the board's load is shorter (PP-OCRv4 fp32,
  one core: rec 0.33 s instead of 0.50 s, cls 0.17 s instead of 0.28 s); outputs equal the ONNX
  file's (1e-5) and so does the latency.
- int8 variants: ``Core.read_model``, the very ONNX import the engine runs at load, saved as IR
  (no shorter load, but no parsing of the ONNX on the board either). ``convert_model``'s offline
  transformations change how the CPU plugin runs an ONNX Runtime QDQ model (PP-OCRv4 rec int8:
  exact match 0.52 from the ONNX file, 0.155 from a convert_model IR), and the IR must compute
  what the variant computes.
- The fp16 variant keeps its float16 weights and Casts; int8 weights are stored as int8 with
  FakeQuantize nodes either way. ``ov.save_model`` compresses float32 weights to float16 unless
  told not to, which would turn fp32 into another fp16 variant: it is always told not to.

Target: the IR is device-independent; the same file runs on CPU, GPU and NPU, and the device is
the engine option ``device`` chosen when the board loads it. So there is one target, ``any``, and
one conversion per variant for every board. A device name given as the target is refused with
that explanation rather than silently measured on the CPU.

The conversion runs in a fresh interpreter: OpenVINO names the nodes it creates from a
process-wide counter, so only a fresh process gives the same bytes (and hash) for the same
input. The saved IR must keep the ONNX input names (the agent feeds inputs by name) and the
output order (outputs are returned in model order); both are checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.convert import ConversionError, Converter, ConvertInput, pack, register

TARGET = "any"
DEVICES = ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI")
STEM = "model"  # the tar holds model.xml then model.bin: OpenVINO finds the .bin by the .xml's stem
CONVERT_TIMEOUT_S = 600.0
INFO_MARK = "EDGEFARM-OV-INFO "
# A traceback's last line "openvino._pyopenvino.OpConversionFailure: ...", and lines that say nothing.
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Failure|Exception|Interrupt)):\s*(.*)$")
_NOISE = re.compile(r"^(Check '.*' failed at |Exception from src/|Summary:$)")

# argv: source.onnx out.xml convert_model|read_model. Prints one INFO_MARK line describing the IR as read back.
_TOOL = r"""
import json, sys
from collections import Counter
import openvino as ov
src, xml, frontend = sys.argv[1], sys.argv[2], sys.argv[3]
model = ov.convert_model(src) if frontend == "convert_model" else ov.Core().read_model(src)
ov.save_model(model, xml, compress_to_fp16=False)
saved = ov.Core().read_model(xml)
ops = Counter(op.get_type_name() for op in saved.get_ops())
weights = Counter(op.get_output_element_type(0).get_type_name() for op in saved.get_ops()
                  if op.get_type_name() == "Constant" and len(op.get_output_partial_shape(0)) > 1)
print(%r + json.dumps({
    "inputs": [p.get_node().get_friendly_name() for p in saved.inputs],
    "outputs": [sorted(p.get_names()) for p in saved.outputs],
    "weights": dict(weights), "fake_quantize": ops.get("FakeQuantize", 0), "ops": sum(ops.values()),
}), flush=True)
""" % INFO_MARK


@register
class OpenVinoConverter(Converter):
    """ONNX -> OpenVINO IR: convert_model (float) or read_model (int8), then save_model keeping the weights."""

    engine = "openvino"
    suffix = ".tar"
    version = 1
    targets = (TARGET,)

    def default_target(self, arch: str) -> str:
        return TARGET  # the IR is the same for every architecture and device

    def tool_versions(self) -> dict[str, str]:
        try:
            import openvino
        except ImportError as exc:
            raise ConversionError(f"openvino is not installed on the controller: {exc}") from None
        return {"openvino": str(openvino.get_version())}

    def convert(self, inp: ConvertInput, out: Path) -> dict[str, Any]:
        if inp.target != TARGET:
            if inp.target.upper().split(":", 1)[0] in DEVICES:
                raise ConversionError(
                    f"openvino target {inp.target!r}: the IR is device-independent, use target {TARGET!r} "
                    f"and choose the device with the engine option 'device'")
            raise ConversionError(f"openvino target {inp.target!r} is not one of {', '.join(self.targets)}")
        version = self.tool_versions()["openvino"]
        expected = _onnx_io(inp.model)
        timeout = float((inp.options or {}).get("timeout_s", CONVERT_TIMEOUT_S))
        with tempfile.TemporaryDirectory(prefix="edgefarm-openvino-") as tmp:
            xml = Path(tmp) / f"{STEM}.xml"
            frontend = "read_model" if inp.precision == "int8" else "convert_model"
            got = _run_tool(inp.model, xml, frontend, timeout, inp.variant)
            same_outputs = len(got["outputs"]) == len(expected["outputs"]) and all(
                name in names for name, names in zip(expected["outputs"], got["outputs"]))
            if got["inputs"] != expected["inputs"] or not same_outputs:
                raise ConversionError(
                    f"openvino IR of {inp.variant} has inputs {got['inputs']} and outputs {got['outputs']}, "
                    f"the ONNX model {expected['inputs']} and {expected['outputs']}")
            files = [p for p in (xml, xml.with_suffix(".bin")) if p.is_file()]
            pack(files, out)
            sizes = {p.name: p.stat().st_size for p in files}
        return {
            "openvino": version, "target": TARGET, "variant": inp.variant, "source": "variant", "frontend": frontend,
            "device": "chosen by the engine at load (option 'device', default CPU); same IR for all",
            "compress_to_fp16": False, "inputs": expected["inputs"], "outputs": expected["outputs"],
            "weights": got["weights"], "fake_quantize": got["fake_quantize"], "ops": got["ops"],
            "files": sizes, "size_bytes": out.stat().st_size,
        }


def _onnx_io(path: Path) -> dict[str, list[str]]:
    """Input (without initializers) and output names of an ONNX file, in graph order."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # DecodeError, OSError...
        raise ConversionError(f"openvino converter cannot read {path.name} as ONNX: {_reason(str(exc))}") from None
    weights = {t.name for t in graph.initializer}
    return {"inputs": [i.name for i in graph.input if i.name not in weights], "outputs": [o.name for o in graph.output]}


def _run_tool(src: Path, xml: Path, frontend: str, timeout: float, variant: str) -> dict[str, Any]:
    """convert_model (or read_model) + save_model in a fresh interpreter; what the saved IR holds."""
    try:
        proc = subprocess.run([sys.executable, "-c", _TOOL, str(src), str(xml), frontend], capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"openvino conversion of {variant} did not finish in {timeout:.0f} s") from None
    for line in proc.stdout.splitlines():
        if line.startswith(INFO_MARK) and proc.returncode == 0:
            return json.loads(line[len(INFO_MARK):])
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
    raise ConversionError(f"openvino cannot convert {variant} ({src.name}), exit {how}: {_reason(proc.stderr)}")


def _reason(text: str) -> str:
    """The tool's complaint on one line: the exception's lines, without OpenVINO's "Check ...
    failed at src/...cpp" preamble (the reason follows it)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    heads = [i for i, ln in enumerate(lines) if _EXCEPTION.match(ln)]
    if not heads:
        return (lines[-1] if lines else "no output")[:400]
    first = _EXCEPTION.match(lines[heads[-1]])
    assert first is not None
    parts = [first.group(1) + ":", first.group(2)] + lines[heads[-1] + 1:]
    kept = [p for p in parts if p and not _NOISE.match(p)]
    return " ".join(kept)[:400]

"""ncnn engine: an ncnn.Net loaded from the ``.param`` + ``.bin`` pnnx made on the controller.

The model comes as the ``.param`` path; its ``.bin`` and ``.names.json`` sit beside it with the
same stem (controller/convert/ncnn.py packs them so). The names file maps the ONNX inputs and
outputs to ncnn's blobs (in0.., out0..) and gives their ONNX shapes: the job feeds inputs by
ONNX name and gets outputs in ONNX shape, batch axis included. ncnn has no batch axis, so the
model is fixed at batch 1 (input_shapes says so and the agent sweeps no other batch).

Options: ``threads`` (opt.num_threads; None = ncnn's default, the big cores), ``model_precision``
(the artifact's: fp32, fp16, int8), ``precision`` (overrides it: fp32 or fp16 for a float
model; an int8 one computes in int8 only), ``target``
("cpu", the default, or "vulkan").

Precision: ncnn's Option turns fp16 storage, packing and arithmetic ON by default and uses them
wherever a layer has fp16 kernels (ARM with fp16 vector arithmetic; weights in fp16 on x86 with
AVX/F16C), which changes results. An fp32 model is therefore loaded with every fp16 and bf16
switch off, so it really computes in fp32; an fp16 one with them on, and is reported as fp16
only when the CPU (or the Vulkan device) has an fp16 path at all.
"""

from __future__ import annotations

import ctypes.util
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from agent.engines import register
from agent.engines.base import Engine, EngineError, EngineUnavailable, canonical_precision

_TARGETS = ("cpu", "vulkan")
_FP16_SWITCHES = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")


def _ncnn() -> Any:
    """The ncnn module, imported here so the agent starts without it."""
    try:
        import ncnn
    except ImportError as exc:
        raise EngineUnavailable("ncnn cannot be imported: %s" % exc) from exc
    return ncnn


def _gpu_count(ncnn: Any) -> int:
    """Vulkan devices ncnn sees; 0 without a Vulkan loader (asking ncnn then only prints dlopen errors)."""
    if ctypes.util.find_library("vulkan") is None:
        return 0
    try:
        return int(ncnn.get_gpu_count())
    except Exception:  # a wheel built without Vulkan has no GPU to offer
        return 0


def _cpu_fp16(ncnn: Any) -> Dict[str, bool]:
    """Which fp16 paths ncnn has on this CPU: storage (weights and blobs kept in fp16) and arithmetic."""

    def has(name: str) -> bool:
        check = getattr(ncnn, name, None)
        try:
            return bool(check()) if check is not None else False
        except Exception:
            return False

    arithmetic = has("cpu_support_arm_asimdhp")  # ARMv8.2 fp16 vector arithmetic
    storage = arithmetic or has("cpu_support_arm_vfpv4") or has("cpu_support_x86_avx")
    return {"storage": storage, "arithmetic": arithmetic}


def _read_names(param_path: str) -> Dict[str, Any]:
    stem = param_path[: -len(".param")]
    names_path = stem + ".names.json"
    if not os.path.isfile(names_path):
        raise EngineError(
            "ncnn model %s has no %s beside it (made by EdgeFarm's ncnn converter: ONNX names and shapes)"
            % (param_path, os.path.basename(names_path))
        )
    with open(names_path) as fh:
        names = json.load(fh)
    for key in ("inputs", "outputs"):
        if not isinstance(names.get(key), list) or not names[key]:
            raise EngineError("%s lists no %s" % (names_path, key))
    return names


@register("ncnn")
class NcnnEngine(Engine):
    """ncnn Net with one Extractor per run, batch 1."""

    formats = (".param",)

    def __init__(self) -> None:
        super().__init__()
        self._net: Any = None
        self._inputs: List[Dict[str, Any]] = []
        self._outputs: List[Dict[str, Any]] = []
        self._precision = "fp32"
        self._device = "CPU"

    @classmethod
    def version(cls) -> str:
        return str(_ncnn().__version__)

    @classmethod
    def probe(cls) -> Dict[str, Any]:
        ncnn = _ncnn()
        fp16 = _cpu_fp16(ncnn)
        return {
            "version": str(ncnn.__version__),
            "vulkan_devices": _gpu_count(ncnn),
            "fp16_storage": fp16["storage"],
            "fp16_arithmetic": fp16["arithmetic"],
            # What ncnn would do if not told: its Option has fp16 on by default.
            "default_fp16": bool(ncnn.Option().use_fp16_storage),
        }

    def load(self, model_path: str, options: Dict[str, Any]) -> None:
        ncnn = _ncnn()
        self.check_format(model_path)
        self.options = dict(options)
        self.model_path = model_path
        names = _read_names(model_path)
        self._inputs, self._outputs = list(names["inputs"]), list(names["outputs"])

        target = str(options.get("target") or "cpu").lower()
        if target not in _TARGETS:
            raise EngineError("ncnn target %r is not one of %s" % (target, ", ".join(_TARGETS)))
        wanted = (canonical_precision(options.get("precision"))
                  or canonical_precision(options.get("model_precision"))
                  or canonical_precision(names.get("precision")) or "fp32")
        if wanted not in ("fp32", "fp16", "int8"):
            raise EngineError("ncnn engine computes in fp32, fp16 or int8, not %r" % wanted)
        if (names.get("precision") == "int8") != (wanted == "int8"):
            # int8 weights read as float would be garbage, and an fp32 .bin has no int8 scales.
            raise EngineError("ncnn model %s is %s: it cannot compute in %s"
                              % (model_path, names.get("precision", "fp32"), wanted))

        net = ncnn.Net()
        opt = net.opt
        if options.get("threads") is not None:
            opt.num_threads = int(options["threads"])
        if target == "vulkan":
            if _gpu_count(ncnn) < 1:
                raise EngineError("ncnn target 'vulkan' asked, but ncnn finds no Vulkan device on this board")
            opt.use_vulkan_compute = True
        else:
            opt.use_vulkan_compute = False
        # fp16 on only for an fp16 model: ncnn's default (on) would halve an fp32 model silently.
        fp16 = wanted == "fp16"
        for switch in _FP16_SWITCHES:
            setattr(opt, switch, fp16)
        opt.use_bf16_storage = False
        if hasattr(opt, "use_bf16_packed"):
            opt.use_bf16_packed = False
        net.opt = opt

        weights = model_path[: -len(".param")] + ".bin"
        if net.load_param(model_path) != 0:
            raise EngineError("ncnn could not load %s (a layer this ncnn does not have?)" % model_path)
        if net.load_model(weights) != 0:
            raise EngineError("ncnn could not load the weights %s" % weights)
        blobs_in, blobs_out = set(net.input_names()), set(net.output_names())
        missing = [s["blob"] for s in self._inputs if s["blob"] not in blobs_in]
        missing += [s["blob"] for s in self._outputs if s["blob"] not in blobs_out]
        if missing:
            raise EngineError("ncnn model %s has no blob(s) %s named in its names file" % (model_path, missing))
        self._net = net
        self._device = "Vulkan" if target == "vulkan" else "CPU"
        if wanted == "fp16":
            self._precision = "fp16" if (target == "vulkan" or _cpu_fp16(ncnn)["storage"]) else "fp32"
        else:
            self._precision = wanted

    def _require(self) -> Any:
        if self._net is None:
            raise EngineError("ncnn engine has no model loaded")
        return self._net

    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        ncnn = _ncnn()
        net = self._require()
        with net.create_extractor() as ex:
            for spec in self._inputs:
                name = spec["name"]
                if name not in inputs:
                    raise EngineError("ncnn run is missing input %r" % name)
                x = inputs[name]
                if list(x.shape) != list(spec["shape"]):
                    raise EngineError(
                        "ncnn input %r must have shape %s (batch fixed at 1), got %s"
                        % (name, spec["shape"], list(x.shape))
                    )
                # Mat wraps the buffer; clone so an in-place first layer never writes into the caller's array.
                ex.input(spec["blob"], ncnn.Mat(np.ascontiguousarray(x[0], dtype=np.float32)).clone())
            results = []
            for spec in self._outputs:
                code, mat = ex.extract(spec["blob"])
                if code != 0:
                    raise EngineError("ncnn failed to compute output %r (%s): error %d" % (spec["name"], spec["blob"], code))
                y = np.array(mat, dtype=np.float32)
                if y.size != int(np.prod(spec["shape"])):
                    raise EngineError(
                        "ncnn output %r has %d values, its ONNX shape %s has %d"
                        % (spec["name"], y.size, spec["shape"], int(np.prod(spec["shape"])))
                    )
                results.append(y.reshape(spec["shape"]))
        return results

    def precision(self) -> str:
        self._require()
        return self._precision

    def device(self) -> str:
        self._require()
        return self._device

    def input_names(self) -> List[str]:
        self._require()
        return [s["name"] for s in self._inputs]

    def input_shapes(self) -> Dict[str, List[Optional[int]]]:
        self._require()
        return {s["name"]: [int(d) for d in s["shape"]] for s in self._inputs}

    def close(self) -> None:
        if self._net is not None:
            self._net.clear()
        self._net = None

"""MNN engine: a ``.mnn`` model (see controller/convert/mnn.py) run through MNN's Module API.

Options: ``threads`` -> numThread (None = MNN's default), ``precision`` ("fp32"/"high",
"normal", "fp16"/"low"; None = normal), ``target`` or ``backend`` ("cpu" by default, "opencl",
"vulkan", "metal", "opengl", "cuda"), ``model_precision`` (the artifact's precision, told by
the controller; only used for a model the controller did not convert).

The Module API costs the same per call as the Interpreter/Session API (1.10 vs 1.07 ms p50 on
the cls model, within noise) and takes any batch, several inputs and the outputs in model order
without resizing sessions by hand. MNN falls back to the CPU without a word when the backend
asked for is not built in, so a GPU backend is checked with a session once at load.

What the model computes in: MNN's CPU computes fp32 unless precision "low" meets a CPU with
fp16 arithmetic (ARMv8.2+, which MNN reports at import), and int8 where the converter ran the
offline quantizer; the converter writes that in the model's ``bizCode``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from agent.engines import register
from agent.engines.base import Engine, EngineError, EngineUnavailable, canonical_precision

BIZ_PREFIX = "edgefarm:"
# The agent's and MNN's precision names -> BackendConfig::PrecisionMode (Normal 0, High 1, Low 2).
_PRECISION_MODES = {"normal": 0, "high": 1, "low": 2, "fp32": 1, "fp16": 2}
_MODE_NAMES = {0: "normal", 1: "high", 2: "low"}
# Backend names -> MNNForwardType; MNN reports its CPU as 0 or 13 (CPU extension).
_BACKENDS = {"CPU": 0, "METAL": 1, "CUDA": 2, "OPENCL": 3, "OPENGL": 6, "VULKAN": 7}
_CPU_TYPES = (0, 13)

_state: Dict[str, Any] = {}  # the imported modules and what MNN printed at import


def _mnn() -> Dict[str, Any]:
    """MNN's modules, imported once with its stdout banner captured (not printed)."""
    if "MNN" not in _state:
        already = "MNN" in sys.modules
        try:
            with _CapturedStdout() as captured:
                import MNN
                import MNN.expr
                import MNN.nn
        except ImportError as exc:
            raise EngineUnavailable("MNN cannot be imported: %s" % exc) from exc
        _state.update(MNN=MNN, F=MNN.expr, nn=MNN.nn,
                      banner=None if already else captured.text)
    return _state


class _CapturedStdout:
    """Points file descriptor 1 at a temporary file: MNN's library prints a line of CPU features
    on stdout at import, which would land in the middle of ``agent probe``'s JSON."""

    def __init__(self) -> None:
        self.text = ""
        self._saved: Optional[int] = None
        self._sink: Any = None

    def __enter__(self) -> "_CapturedStdout":
        import tempfile

        try:
            sys.stdout.flush()
            self._sink = tempfile.TemporaryFile()
            self._saved = os.dup(1)
            os.dup2(self._sink.fileno(), 1)
        except (OSError, ValueError):  # no fd 1 to borrow: let MNN print
            self._saved = None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._saved is None:
            return
        _flush_c_stdout()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._sink.seek(0)
        self.text = self._sink.read().decode("utf-8", "replace")
        self._sink.close()


def _flush_c_stdout() -> None:
    """C's stdout buffer still holds what the library printed when fd 1 is not a terminal."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # no libc to call (Windows...): the text may come out later instead
        pass


def _cpu_features(banner: Optional[str]) -> Dict[str, int]:
    """``The device supports: i8sdot:0, fp16:0, i8mm: 0, ...`` -> {"i8sdot": 0, "fp16": 0, ...}."""
    found = re.search(r"The device supports:(.*)", banner or "")
    if not found:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+):\s*(\d+)", found.group(1))}


def _cpu_fp16() -> bool:
    """Whether MNN's CPU backend can compute in fp16 here (ARMv8.2 fp16 arithmetic)."""
    features = _cpu_features(_mnn()["banner"])
    if "fp16" in features:
        return bool(features["fp16"])
    # MNN was imported before the engine could read its banner: ask the kernel instead.
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read().split()
    except OSError:
        return False
    return "asimdhp" in flags


def _model_tag(biz_code: str) -> Dict[str, Any]:
    """What the controller's converter wrote in the bizCode; {} for a model it did not make."""
    if not biz_code.startswith(BIZ_PREFIX):
        return {}
    try:
        tag = json.loads(biz_code[len(BIZ_PREFIX):])
    except ValueError:
        return {}
    return tag if isinstance(tag, dict) else {}


@register("mnn")
class MnnEngine(Engine):
    """MNN Module loaded from a .mnn file, run synchronously."""

    formats = (".mnn",)

    def __init__(self) -> None:
        super().__init__()
        self._module: Any = None
        self._inputs: List[Dict[str, Any]] = []
        self._tag: Dict[str, Any] = {}
        self._backend = "CPU"
        self._mode = 0

    @classmethod
    def version(cls) -> str:
        return str(_mnn()["MNN"].version())

    @classmethod
    def probe(cls) -> Dict[str, Any]:
        state = _mnn()
        facts: Dict[str, Any] = {"version": str(state["MNN"].version())}
        features = _cpu_features(state["banner"])
        if features:
            facts["cpu_features"] = features
        return facts

    def load(self, model_path: str, options: Dict[str, Any]) -> None:
        state = _mnn()
        self.check_format(model_path)
        self.close()  # a failed load must not leave the previous model looking loaded
        self.options = dict(options)
        self.model_path = model_path
        self._backend = str(options.get("backend") or options.get("target") or "cpu").upper()
        if self._backend not in _BACKENDS:
            raise EngineError("mnn backend %r is not one of %s"
                              % (self._backend.lower(), ", ".join(b.lower() for b in _BACKENDS)))
        wanted = options.get("precision")
        if wanted is None:
            self._mode = 0
        else:
            key = str(wanted).strip().lower()
            if key not in _PRECISION_MODES:
                try:
                    key = canonical_precision(key) or key  # f32, float16... in the agent's spelling
                except ValueError:
                    pass
            if key not in _PRECISION_MODES:
                raise EngineError("mnn precision %r is not one of fp32, fp16, normal, high, low" % wanted)
            self._mode = _PRECISION_MODES[key]
        config: Dict[str, Any] = {"backend": self._backend, "precision": self._mode}
        if options.get("threads") is not None:
            config["numThread"] = int(options["threads"])
        if self._backend != "CPU":
            self._check_backend(state["MNN"], model_path, config)
        nn, F = state["nn"], state["F"]
        module, error = None, None  # type: Any, Optional[Exception]
        with _CapturedStdout() as captured:
            try:
                runtime = nn.create_runtime_manager((config,))
                module = nn.load_module_from_file(model_path, [], [], runtime_manager=runtime, shape_mutable=True)
            except Exception as exc:  # MNN raises bare Exceptions with a short text
                module, error = None, exc
        if module is None:
            said = " ".join(captured.text.split())
            raise EngineError("mnn cannot load %s: %s%s" % (model_path, error, "; MNN said: " + said[-300:] if said else ""))
        info = module.get_info()
        self._tag = _model_tag(str(info.get("bizCode") or ""))
        dtypes = {F.float: np.float32, F.int: np.int32, F.uint8: np.uint8, F.int8: np.int8,
                  F.double: np.float64, F.int64: np.int64}
        self._inputs = []
        for name, var in zip(info["inputNames"], info["inputs"]):
            shape = [int(d) for d in var.shape]
            if shape and self._tag.get("dynamic_batch"):
                shape[0] = -1  # the ONNX batch was symbolic; MNN resizes for any batch
            self._inputs.append({"name": str(name), "shape": shape, "dtype": var.dtype,
                                 "numpy": dtypes.get(var.dtype, np.float32),
                                 # Inputs are given in the ONNX layout, which MNN keeps (NCHW).
                                 "format": F.NHWC if var.data_format == F.NHWC else F.NCHW})
        self._module = module

    def _check_backend(self, mnn: Any, model_path: str, config: Dict[str, Any]) -> None:
        """Refuse a backend MNN would silently replace with its CPU."""
        with _CapturedStdout():
            interpreter = mnn.Interpreter(model_path)
            session = interpreter.createSession(dict(config))
            used = int(interpreter.getSessionInfo(session, 2))  # Interpreter::BACKENDS
        del session, interpreter
        if used in _CPU_TYPES:
            raise EngineError("mnn has no %s backend on this board; the model would run on its CPU" % self._backend)

    def _require(self) -> Any:
        if self._module is None:
            raise EngineError("mnn engine has no model loaded")
        return self._module

    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        module = self._require()
        F = _state["F"]
        feeds = []
        for spec in self._inputs:
            if spec["name"] not in inputs:
                raise EngineError("mnn model input %r is not among the inputs given (%s)"
                                  % (spec["name"], ", ".join(inputs)))
            array = np.ascontiguousarray(inputs[spec["name"]], dtype=spec["numpy"])
            feeds.append(F.const(array, list(array.shape), spec["format"], spec["dtype"]))
        # read() maps MNN's own buffer, which the next call overwrites: copy it out.
        return [np.array(out.read(), copy=True) for out in module.forward(feeds)]

    def precision(self) -> str:
        self._require()
        compute = self._tag.get("compute")
        if compute == "int8" or (not self._tag and canonical_precision(self.options.get("model_precision")) == "int8"):
            return "int8"  # quantized convolutions; the layers between stay in float
        if self._backend == "CPU":
            return "fp16" if self._mode == 2 and _cpu_fp16() else "fp32"
        if self._backend == "OPENCL":
            # MNN 3.6's OpenCL: high = fp32; normal = fp16 storage, fp32 compute; low = fp16.
            return "fp16" if self._mode == 2 else "fp32"
        return "fp32" if self._mode == 1 else "fp16"  # Vulkan, Metal...: fp16 unless high

    def device(self) -> str:
        return self._backend

    def input_names(self) -> List[str]:
        self._require()
        return [spec["name"] for spec in self._inputs]

    def input_shapes(self) -> Dict[str, List[Optional[int]]]:
        self._require()
        return {spec["name"]: [d if d >= 0 else None for d in spec["shape"]] for spec in self._inputs}

    def close(self) -> None:
        self._module = None
        self._inputs = []

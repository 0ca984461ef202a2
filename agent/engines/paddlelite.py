"""Paddle Lite engine: a ``.nb`` model made by opt, run by a LightPredictor (MobileConfig).

Options: ``threads`` (MobileConfig.set_threads, which ARM builds have; the x86 pip wheel binds
no thread setter and ran the PaddleOCR models on one thread whatever OMP_NUM_THREADS or
MKL_NUM_THREADS said, so there ``threads`` has no effect: probe() says so, "threads": false),
``power_mode`` (ARM builds: "no_bind", "high", "low", "full", "rand_high", "rand_low"),
``nnadapter_devices`` (list, e.g. ["rockchip_npu"]; default: the NNAdapter devices the .nb was
made for) and ``nnadapter_context_properties`` for NNAdapter boards, ``model_precision`` (the artifact's precision, told by the controller).

A .nb does not say its input shapes until one is fed. The controller's converter puts a JSON
file beside it (``<model>.nb.json``: input names and shapes, output names, target, precision);
without one the shapes are reported unknown. A .nb made from a fixed-shape ONNX model keeps
its batch fixed (x2paddle bakes reshape targets), so the batch reported must be believed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from agent.engines import register
from agent.engines.base import Engine, EngineError, EngineUnavailable, canonical_precision

_POWER_MODES = {
    "high": "LITE_POWER_HIGH", "low": "LITE_POWER_LOW", "full": "LITE_POWER_FULL",
    "no_bind": "LITE_POWER_NO_BIND", "rand_high": "LITE_POWER_RAND_HIGH", "rand_low": "LITE_POWER_RAND_LOW",
}
_CPU_TARGETS = ("x86", "arm", "host")
_OWN_TARGETS = _CPU_TARGETS + ("opencl",)  # Paddle Lite's own back ends; any other is an NNAdapter device


def _lite() -> Any:
    """paddlelite.lite, imported here so the agent starts without it."""
    try:
        from paddlelite import lite
    except ImportError as exc:
        raise EngineUnavailable(
            "paddlelite cannot be imported (%s); Paddle Lite's wheels stop at Python 3.10 "
            "(pip install paddlelite==2.13rc0), or build it for the board" % exc
        ) from exc
    # Its wheels are built against numpy 1: under numpy 2 Tensor.from_numpy silently feeds
    # garbage (measured: the cls model's outputs off by 0.99), so a number would be a lie.
    if int(np.__version__.split(".")[0]) >= 2:
        raise EngineUnavailable(
            "paddlelite %s needs numpy < 2 (numpy %s is installed: its from_numpy would feed wrong inputs)"
            % (_library_version(), np.__version__)
        )
    return lite


def _library_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # Python 3.7
        return "unknown"
    try:
        return version("paddlelite")
    except PackageNotFoundError:  # a Paddle Lite built on the board, not pip-installed
        return "unknown"


@register("paddlelite")
class PaddleLiteEngine(Engine):
    """Paddle Lite LightPredictor on a naive-buffer .nb model."""

    formats = (".nb",)

    def __init__(self) -> None:
        super().__init__()
        self._predictor: Any = None
        self._inputs: List[str] = []
        self._outputs: int = 0
        self._info: Dict[str, Any] = {}
        self._fixed: Dict[str, List[Optional[int]]] = {}

    @classmethod
    def version(cls) -> str:
        _lite()
        return _library_version()

    @classmethod
    def probe(cls) -> Dict[str, Any]:
        lite = _lite()
        config = lite.MobileConfig()
        return {"version": _library_version(), "threads": hasattr(config, "set_threads"),
                "power_modes": hasattr(config, "set_power_mode")}

    def load(self, model_path: str, options: Dict[str, Any]) -> None:
        lite = _lite()
        self.check_format(model_path)
        if not os.path.isfile(model_path):
            raise EngineError("paddlelite model file not found: %s" % model_path)
        self.options = dict(options)
        self.model_path = model_path
        self._info = self._sidecar(model_path)
        config = lite.MobileConfig()
        config.set_model_from_file(model_path)
        threads = options.get("threads")
        if threads is not None and hasattr(config, "set_threads"):  # ARM builds; x86 runs one thread
            config.set_threads(int(threads))
        mode = options.get("power_mode")
        if mode is not None:
            if str(mode) not in _POWER_MODES:
                raise EngineError("paddlelite power_mode %r is not one of %s" % (mode, ", ".join(_POWER_MODES)))
            if not hasattr(config, "set_power_mode"):
                raise EngineError("this Paddle Lite build has no power modes (they are for ARM builds)")
            config.set_power_mode(getattr(lite.PowerMode, _POWER_MODES[str(mode)]))
        devices = self._devices()
        if devices:
            config.set_nnadapter_device_names(devices)
            if options.get("nnadapter_context_properties"):
                config.set_nnadapter_context_properties(str(options["nnadapter_context_properties"]))
        try:
            self._predictor = lite.create_paddle_predictor(config)
        except Exception as exc:
            raise EngineError("paddlelite cannot load %s: %s" % (model_path, exc)) from exc
        self._inputs = list(self._predictor.get_input_names())
        self._outputs = len(self._predictor.get_output_names())
        self._fixed = {str(i["name"]): [int(d) if int(d) > 0 else None for d in i["shape"]]
                       for i in self._info.get("inputs") or []}

    def _devices(self) -> List[str]:
        """The NNAdapter devices to run on: the job's, else those the .nb was made for."""
        told = self.options.get("nnadapter_devices")
        if told:
            return [str(d) for d in told]
        places = str(self._info.get("target") or "").split(",")
        return [p for p in places if p and p not in _OWN_TARGETS]

    @staticmethod
    def _sidecar(model_path: str) -> Dict[str, Any]:
        """What the converter wrote beside the .nb, or {} for a .nb made elsewhere."""
        path = model_path + ".json"
        if not os.path.isfile(path):
            return {}
        with open(path) as fh:
            info = json.load(fh)
        return info if isinstance(info, dict) else {}

    def _require(self) -> Any:
        if self._predictor is None:
            raise EngineError("paddlelite engine has no model loaded")
        return self._predictor

    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        predictor = self._require()
        for name in self._inputs:
            if name not in inputs:
                raise EngineError("paddlelite model input %r was not fed (got %s)" % (name, ", ".join(inputs)))
            # A shape the .nb was not made for aborts the whole process inside Paddle Lite
            # (a failed CHECK in its reshape op): refuse it here instead.
            fixed = self._fixed.get(name)
            shape = tuple(inputs[name].shape)
            if fixed is not None and (len(shape) != len(fixed) or any(
                    want is not None and want != have for want, have in zip(fixed, shape))):
                raise EngineError("paddlelite model input %r is fixed at %s, got %s" % (
                    name, "x".join(str(d or "?") for d in fixed), "x".join(str(d) for d in shape)))
            # from_numpy resizes the tensor and copies; Paddle Lite wants contiguous memory.
            predictor.get_input_by_name(name).from_numpy(np.ascontiguousarray(inputs[name]))
        predictor.run()
        # numpy() is a view of Paddle Lite's own buffer, which the next run overwrites: copy.
        return [np.array(predictor.get_output(i).numpy(), copy=True) for i in range(self._outputs)]

    def precision(self) -> str:
        self._require()
        # What the converter made (opt's int8 or fp16 kernels are checked there) before what the
        # controller says the variant was; a bare .nb from elsewhere computes in fp32 on x86.
        made = canonical_precision(self._info.get("precision"))
        return made or canonical_precision(self.options.get("model_precision")) or "fp32"

    def device(self) -> str:
        self._require()
        devices = self._devices()
        if devices:
            return ",".join(devices)
        target = str(self._info.get("target") or self.options.get("target") or "x86").split(",")[0]
        if target in _CPU_TARGETS:
            return "CPU"
        return "OpenCL" if target == "opencl" else target

    def input_names(self) -> List[str]:
        self._require()
        return list(self._inputs)

    def input_shapes(self) -> Dict[str, List[Optional[int]]]:
        self._require()
        # No sidecar: the rank is unknown too; the first dimension is reported unknown (dynamic).
        return {name: list(self._fixed.get(name, [None])) for name in self._inputs}

    def close(self) -> None:
        self._predictor = None
        self._fixed = {}

"""ONNX Runtime engine: an InferenceSession on the CPU execution provider by default.

Options: ``threads`` (intra_op_num_threads; None = ORT's default), ``providers`` (list of
provider names, or [name, {provider options}] pairs), ``graph_optimization`` ("disable",
"basic", "extended", "layout", "all"; None = ORT's default, all), ``model_precision`` (the
precision of the artifact, told by the controller: ORT computes in what the model says).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from agent.engines import register
from agent.engines.base import Engine, EngineError, EngineUnavailable, canonical_precision

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}
_DEFAULT_PROVIDERS = ["CPUExecutionProvider"]


def _ort() -> Any:
    """The onnxruntime module, imported here so the agent starts without it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineUnavailable("onnxruntime cannot be imported: %s" % exc) from exc
    return onnxruntime


def _provider_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry[0])


@register("onnxruntime")
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime InferenceSession."""

    formats = (".onnx", ".ort")

    def __init__(self) -> None:
        super().__init__()
        self._session: Any = None
        self._output_names: List[str] = []

    @classmethod
    def version(cls) -> str:
        return str(_ort().__version__)

    @classmethod
    def probe(cls) -> Dict[str, Any]:
        ort = _ort()
        return {"version": str(ort.__version__), "providers": list(ort.get_available_providers())}

    def load(self, model_path: str, options: Dict[str, Any]) -> None:
        ort = _ort()
        self.check_format(model_path)
        self.options = dict(options)
        self.model_path = model_path
        so = ort.SessionOptions()
        threads = options.get("threads")
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        level = options.get("graph_optimization")
        if level is not None:
            if str(level) not in _OPT_LEVELS:
                raise ValueError(
                    "graph_optimization %r is not one of %s" % (level, ", ".join(_OPT_LEVELS))
                )
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        providers = options.get("providers") or list(_DEFAULT_PROVIDERS)
        # JSON brings [name, {options}] pairs as lists; ORT wants tuples for those.
        providers = [p if isinstance(p, str) else (str(p[0]), dict(p[1])) for p in providers]
        self._session = ort.InferenceSession(model_path, sess_options=so, providers=providers)
        # ORT silently falls back to CPU when a provider cannot start: CPU numbers must never
        # be reported as CUDA (or any other provider's) numbers.
        used = list(self._session.get_providers())
        dropped = [_provider_name(p) for p in providers if _provider_name(p) not in used]
        if dropped:
            self.close()
            raise EngineError(
                "onnxruntime dropped the requested provider(s) %s; the session would run on %s "
                "(providers available on this board: %s)"
                % (", ".join(dropped), ", ".join(used), ", ".join(ort.get_available_providers()))
            )
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _require(self) -> Any:
        if self._session is None:
            raise EngineError("onnxruntime engine has no model loaded")
        return self._session

    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return list(self._require().run(self._output_names, inputs))

    def precision(self) -> str:
        told = canonical_precision(self.options.get("model_precision"))
        if told is not None:
            return told
        # Not told: the first input's element type is the best evidence the session has.
        first = self._require().get_inputs()[0].type  # e.g. "tensor(float16)"
        return {"tensor(float16)": "fp16", "tensor(bfloat16)": "bf16"}.get(first, "fp32")

    def device(self) -> str:
        provider = self._require().get_providers()[0]
        return provider[: -len("ExecutionProvider")] if provider.endswith("ExecutionProvider") else provider

    def input_names(self) -> List[str]:
        return [i.name for i in self._require().get_inputs()]

    def input_shapes(self) -> Dict[str, List[Optional[int]]]:
        return {
            i.name: [d if isinstance(d, int) else None for d in i.shape]
            for i in self._require().get_inputs()
        }

    def close(self) -> None:
        self._session = None

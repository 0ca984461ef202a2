"""The engine interface every inference library is wrapped in on the board.

An engine is created without touching its library; ``load`` imports it. A missing library is
the clear state :class:`EngineUnavailable`, so a board without OpenVINO still runs ONNX Runtime.

Exceptions::

    RuntimeError
     +-- EngineUnavailable   the library is not installed or cannot be imported
     +-- EngineError         the library is there but refused the request (dropped provider...)
"""

from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# Names a precision may be requested or reported with, mapped to the agent's spelling.
PRECISION_ALIASES = {
    "fp32": "fp32", "f32": "fp32", "float32": "fp32",
    "fp16": "fp16", "f16": "fp16", "float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "int8": "int8", "i8": "int8", "u8": "int8",
}


class EngineUnavailable(RuntimeError):
    """The engine's library cannot be imported on this board."""


class EngineError(RuntimeError):
    """The engine's library is present but did not do what the job asked."""


def canonical_precision(value: Optional[str]) -> Optional[str]:
    """``"f32"``/``"fp32"``/... -> ``"fp32"``; None stays None; unknown names raise ValueError."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in PRECISION_ALIASES:
        raise ValueError(
            "unknown precision %r; expected one of %s" % (value, ", ".join(sorted(PRECISION_ALIASES)))
        )
    return PRECISION_ALIASES[key]


class Engine(abc.ABC):
    """One model loaded in one inference library, run synchronously on batch tensors."""

    name: str = ""
    formats: Tuple[str, ...] = ()

    def __init__(self) -> None:
        self.options: Dict[str, Any] = {}
        self.model_path: Optional[str] = None

    @classmethod
    @abc.abstractmethod
    def version(cls) -> str:
        """The library's version; raises EngineUnavailable when it is not installed."""

    @classmethod
    def probe(cls) -> Dict[str, Any]:
        """Facts about the library on this board, without a model. Subclasses add their own."""
        return {"version": cls.version()}

    @classmethod
    def configurations(cls, variant: str, probed: Dict[str, Any],
                       options: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
        """The configurations a variant is measured in on this engine: (label, engine options).

        ``probed`` is what :meth:`probe` found on the board. Most engines compute a variant one
        way: one configuration. An engine whose defaults change the arithmetic (OpenVINO computes
        fp32 in bf16 on CPUs that have it) says so here, so the controller needs no engine-specific
        knowledge to plan it. Runs on the controller, from the class alone: no library is imported.
        """
        return [(variant, options)]

    @abc.abstractmethod
    def load(self, model_path: str, options: Dict[str, Any]) -> None:
        """Read and compile the model with the job's engine options."""

    @abc.abstractmethod
    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """One synchronous inference; outputs in the model's output order."""

    @abc.abstractmethod
    def precision(self) -> str:
        """The precision the loaded model is really computed in: fp32, fp16, bf16, int8."""

    @abc.abstractmethod
    def device(self) -> str:
        """The device the loaded model runs on, e.g. ``CPU``."""

    @abc.abstractmethod
    def input_names(self) -> List[str]:
        """The model's input names, in model order."""

    @abc.abstractmethod
    def input_shapes(self) -> Dict[str, List[Optional[int]]]:
        """Each input's shape; a dynamic dimension is None."""

    def last_latency_ms(self) -> Optional[float]:
        """The engine's own timing of the last run(), without the Python call around it.

        None where the library keeps no such figure. It lets a measurement be compared with the
        engine's native benchmark tool, which reports this timing and not the call's.
        """
        return None

    def close(self) -> None:
        """Release the model. Safe to call twice or before load."""

    def check_format(self, model_path: str) -> None:
        """Refuse a model file this engine does not read, before its library gives a worse error."""
        if self.formats and not model_path.lower().endswith(tuple(self.formats)):
            raise EngineError(
                "engine %r reads %s files, not %r" % (self.name, "/".join(self.formats), model_path)
            )

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

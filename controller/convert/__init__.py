"""Engine converters: a variant's ONNX model -> the file an engine loads on a board.

ONNX Runtime and OpenVINO read the ONNX variants as they are. Other engines want their own
format: Paddle Lite a ``.nb`` built by its ``opt`` for the board's target, ncnn a param/bin
pair, MNN a ``.mnn`` file, OpenVINO its IR when it should not convert at every load. A
:class:`Converter` makes that file once on the controller; the run caches it by content like
the variants, pushes it like any artifact (checked by sha256 on the board), and a conversion
that fails becomes a failed job (stage ``convert``) carrying the converter's own message.

A format made of several files (ncnn's .param + .bin, OpenVINO's .xml + .bin) travels as one
uncompressed tar (:func:`pack`): the board unpacks it next to the cached file and loads the
first member, so every artifact is still one file with one hash.

The registry is ``controller.plugins.CONVERTERS``: a lazy table engine -> "module:Class", so
importing this package imports no converter and no converter's libraries.

May import: the foundation modules (errors, plugins, workspace) and ``agent`` (the dataset format).
"""

from __future__ import annotations

import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from controller.errors import EdgeFarmError
from controller.plugins import CONVERTERS

__all__ = ["ConvertInput", "Converter", "ConversionError", "converter_for", "converted_engines", "float_weighted_nodes",
           "pack", "register"]

# The ops whose weights int8 quantizes, in every engine's quantizer.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class ConversionError(EdgeFarmError):
    """A converter refused or failed; the message is the tool's own, on one line where it can be."""


@dataclass(frozen=True)
class ConvertInput:
    """Everything a converter may read. ``model`` is the variant's ONNX file; a converter whose
    engine quantizes or halves in its own way starts from ``fp32`` instead, with ``calibration``
    (a dataset .npz, never the evaluation samples) when the variant is int8."""

    variant: str          # the variant's name: fp32, fp16, int8, int8-mixed, pruned...
    precision: str        # what the variant computes in: fp32, fp16, int8
    model: Path           # the variant's ONNX artifact
    fp32: Path            # the fused fp32 ONNX artifact of the same model
    calibration: Path | None
    target: str           # where it runs, in the converter's words (Paddle Lite: x86, arm, opencl...)
    options: dict[str, Any] = field(default_factory=dict)


class Converter(ABC):
    """Turns ONNX into one engine's format. Subclasses run their tools inside ``convert``."""

    engine: ClassVar[str] = ""
    suffix: ClassVar[str] = ""            # of the artifact: ".nb", ".mnn", ".tar"...
    version: ClassVar[int] = 1            # bump when the output changes for the same input: cache key
    targets: ClassVar[tuple[str, ...]] = ()  # the targets it accepts; empty: any

    def default_target(self, arch: str) -> str:
        """The target for a board of this CPU architecture (``uname -m``) when the inventory names none."""
        return self.targets[0] if self.targets else ""

    @abstractmethod
    def tool_versions(self) -> dict[str, str]:
        """The versions of the tools it runs; part of the cache key."""

    @abstractmethod
    def convert(self, inp: ConvertInput, out: Path) -> dict[str, Any]:
        """Write the engine's artifact to ``out``; return what the conversion did (a JSON dict).
        Raise ConversionError with the tool's message when it cannot."""


def register(cls: type[Converter]) -> type[Converter]:
    """Class decorator: the converter for ``cls.engine``; a second one for an engine is refused."""
    return CONVERTERS.register(cls.engine)(cls)


def converted_engines() -> list[str]:
    """The engines whose models a converter makes."""
    return sorted(CONVERTERS)


def converter_for(engine: str) -> Converter | None:
    """The converter for ``engine``, or None when the engine reads the ONNX variant itself."""
    return CONVERTERS.get(engine)() if engine in CONVERTERS else None


def pack(files: list[Path], out: Path) -> None:
    """Several files as one artifact: an uncompressed tar, the file the engine loads first.
    Members carry base names only and fixed metadata, so equal content gives equal hashes."""
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)


def float_weighted_nodes(graph: Any) -> list[Any]:
    """The weighted nodes a QDQ variant (int8-mixed, int8-nncf) left in float: those whose weight
    is an initializer rather than the output of a DequantizeLinear. None in a graph without QDQ.
    Engines that quantize in their own way keep the same nodes in float."""
    if not any(n.op_type == "DequantizeLinear" for n in graph.node):
        return []
    weights = {t.name for t in graph.initializer}
    return [n for n in graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in weights]

"""Variant passes: how one prepared model becomes the fp32-fused, fp16, int8 and pruned artifacts.

In the manner of Olive's passes: each variant is a :class:`Pass` subclass in a module of its own
(``fp32``, ``fp16``, ``int8``, ``int8_mixed``, ``int8_nncf``, ``pruned``), listed by name in the
manifest (``controller.plugins.PASSES``) and imported the first time its name is asked for. A pass
declares what it reads and makes (``starts_from``, ``precision``, ``calibrated``), its options as a
pydantic model (typed, defaulted, described: the spec's ``quantization`` and ``pruning`` sections
are built from these models, so the defaults live there and nowhere else), and its own
``version``, its part of the cache key. Passes are pure functions of their inputs, so the build
caches their outputs by content hash (``controller.build.compile``). Heavy libraries are imported
inside ``run``: importing a pass module is cheap.

Also here: ``graph`` (ONNX helpers the passes share), ``fusion`` (the fp32 pass's record),
``pruning`` and ``finetune`` (the pruned pass's algorithm).

Adding a pass is one module (a ``Pass`` subclass decorated with ``@register()``), a line in the
manifest, and its tests; options read from the spec name the section they live under, and every
option is documented in docs/configuration.md (a test checks both ways).

May import: ``controller.data``, the foundation modules (``controller.errors``,
``controller.validation``, ``controller.plugins``, ``controller.workspace``), ``agent``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from controller.plugins import PASSES
from controller.validation import Strict


class NoOptions(Strict):
    """The options of a pass that has none."""


O = TypeVar("O", bound=Strict)


@dataclass(frozen=True)
class PassInput:
    """What a pass reads, besides its options."""

    source: Path  # the prepared model (shapes fixed, opset >= 13)
    fp32: Path | None  # the fused fp32 artifact, for passes that start from it
    calibration: Path | None  # a dataset .npz, never the evaluation samples
    budget: float | None = None  # the accuracy drop selection accepts, for budgeted passes


class Pass(ABC, Generic[O]):
    """One variant: an ONNX model in, an ONNX model and a record of what was done out."""

    name: ClassVar[str]  # the variant's name in specs, reports and the manifest
    # Bump when the output would change for the same input and options: the cache key has it.
    version: ClassVar[int]
    starts_from: ClassVar[Literal["source", "fp32"]]  # which artifact the pass reads
    precision: ClassVar[Literal["fp32", "fp16", "int8"]]  # what the engines are told the model computes in
    calibrated: ClassVar[bool] = False  # reads calibration samples (rendered apart from the evaluation ones)
    budgeted: ClassVar[bool] = False  # searches under the accuracy budget (PassInput.budget)
    # The spec section its options are read from (controller.config.spec builds them from the passes).
    section: ClassVar[Literal["quantization", "pruning"] | None] = None
    options: type[O]  # its options model (NoOptions for none)

    @abstractmethod
    def run(self, inp: PassInput, options: O, out: Path) -> dict[str, Any]:
        """Write the variant to ``out``; return its record (stored with the variant, shown by
        ``edgefarm variants``)."""

    @classmethod
    def environment(cls) -> dict[str, Any]:
        """What else changes this pass's output (a library that may or may not be installed):
        part of its cache key, beside the versions every pass's key has."""
        return {}


register = PASSES.register


def get_pass(name: str) -> type[Pass[Any]]:
    """The pass of the variant ``name``, its module imported on first use (unknown: UnknownPlugin)."""
    kind: type[Pass[Any]] = PASSES.get(name)
    return kind


def pass_names() -> list[str]:
    """Every variant name, in the order a run builds and reports them (fp32 first)."""
    return PASSES.names()


def run_pass(name: str, inp: PassInput, out: Path, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the pass ``name`` with ``options`` validated by its model (unset keys take its defaults;
    a bad or unknown one raises pydantic's ValidationError, a ValueError, before any work)."""
    kind = get_pass(name)
    return kind().run(inp, kind.options.model_validate(dict(options or {})), out)


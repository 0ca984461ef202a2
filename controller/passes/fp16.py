"""The ``fp16`` variant: weights and compute in float16; inputs and outputs stay float32 for the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.passes import NoOptions, Pass, PassInput, register
from controller.passes.graph import op_counts


@register()
class Fp16(Pass[NoOptions]):
    name = "fp16"
    version = 1
    starts_from = "fp32"
    precision = "fp16"
    options = NoOptions

    def run(self, inp: PassInput, options: NoOptions, out: Path) -> dict[str, Any]:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        assert inp.fp32 is not None
        model = convert_float_to_float16(onnx.load(str(inp.fp32)), keep_io_types=True)
        onnx.save(model, str(out))
        return {"ops": op_counts(out)}

"""The ``fp32`` variant: offline graph optimisation at ONNX Runtime's *basic* level.

Basic is the portable level: constant folding and semantics-preserving fusions (Conv+BN,
Conv+Add, Conv+Mul, Relu+Clip) that leave standard ONNX ops, so OpenVINO and every other engine
still load the result. The extended level would emit ORT-only ops (FusedConv). The record names
every fusion applied (``controller.passes.fusion``). Every other variant is judged against this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.passes import NoOptions, Pass, PassInput, register


@register()
class Fp32Fused(Pass[NoOptions]):
    name = "fp32"
    version = 1
    starts_from = "source"
    precision = "fp32"
    options = NoOptions

    def run(self, inp: PassInput, options: NoOptions, out: Path) -> dict[str, Any]:
        import onnxruntime as ort

        from controller.passes.fusion import fusions

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(inp.source), opts, providers=["CPUExecutionProvider"])
        return fusions(inp.source, out)

"""The ``pruned`` variant: structured channel pruning by per-layer sensitivity under the accuracy
budget, fine-tuned with distillation from fp32 where torch is installed (``controller.passes.pruning``
and ``controller.passes.finetune``). Its options, the spec's ``pruning`` section, live with that
algorithm (``controller.passes.pruning.options``), which reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.passes import Pass, PassInput, register
from controller.passes.graph import op_counts
from controller.passes.pruning import PruningError
from controller.passes.pruning.options import PruningOptions


@register()
class Pruned(Pass[PruningOptions]):
    name = "pruned"
    version = 1
    starts_from = "fp32"
    precision = "fp32"
    calibrated = True
    budgeted = True  # pruning.budget, when the spec sets it, else selection's
    section = "pruning"
    options = PruningOptions

    def run(self, inp: PassInput, options: PruningOptions, out: Path) -> dict[str, Any]:
        from controller.passes.pruning.search import prune

        if inp.fp32 is None or inp.calibration is None:
            raise PruningError("the pruned variant needs the fused fp32 model and calibration samples")
        if options.budget is None:
            options = options.model_copy(update={"budget": inp.budget})
        report = prune(inp.fp32, inp.calibration, out, options)
        return {"ops": op_counts(out), "pruning": report}

    @classmethod
    def environment(cls) -> dict[str, Any]:
        from controller.passes.finetune.training import trainer_version

        # With torch the variant is fine-tuned, without it surgery alone.
        return {"trainer": trainer_version()}

"""The pruned variant's options: the spec's ``pruning`` section (and a model's own ``pruning`` keys).

They live with the algorithm that reads them (the search and the fine-tuning); the ``pruned``
pass declares them as its options model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from controller.validation import Strict


class PruningOptions(Strict):
    """The pruned variant: structured channel pruning under the accuracy budget, then
    fine-tuning with distillation where torch is installed."""

    budget: float | None = Field(None, ge=0, description="accuracy drop allowed on calibration; default: selection's")
    target_flops: float | None = Field(
        None, gt=0, lt=1, description="share of the MACs to remove; default: 0.4 when fine-tuning, else the budget's")
    target_params: float | None = Field(None, gt=0, lt=1, description="share of the weights to remove")
    ratios: list[float] = Field([0.25, 0.5, 0.75], min_length=1, description="per-layer ratios the sensitivity tries")
    max_ratio: float = Field(0.75, gt=0, lt=1, description="most of one layer's channels ever cut")
    round_to: int = Field(8, ge=1, description="channels go in multiples of this (vector widths)")
    criterion: Literal["activation", "l1"] = Field(
        "activation", description="channel ranking: activation (mean activation x consumers' weights) or l1 (weights)")
    samples: int = Field(256, ge=8, description="calibration samples the sensitivity and the budget are measured on")
    finetune: Literal["auto", "off"] = Field("auto", description="auto: fine-tune when torch is installed")
    distill: bool = Field(True, description="knowledge distillation from the fp32 model in the loss")
    train_samples: int = Field(4000, ge=64, description="freshly rendered fine-tuning samples")
    epochs: int = Field(4, ge=1, description="fine-tuning epochs")
    lr: float = Field(1e-3, gt=0, lt=1, description="Adam's learning rate relative to each weight tensor's RMS")
    attempts: int = Field(2, ge=1, description="training runs, backing off towards surgery alone on a miss")
    max_seconds: float = Field(900.0, gt=0, description="longest fine-tuning run")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, ratios: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in ratios):
            raise ValueError(f"ratios must lie in (0, 1), got {ratios}")
        return sorted(set(ratios))


# The defaults, for the functions that take one option alone (round_to, ratios).
DEFAULTS = PruningOptions()

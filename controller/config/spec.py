"""The job spec: which models, variants, engines and boards, and how to measure and judge.

A spec is YAML written by people, so it is validated here, at the boundary, and every error
names the file, the key and the bad value. ``spec_from_model`` builds the same object from
``edgefarm run --model`` flags so that both paths share one validator.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from controller.errors import ConfigError
from controller.plugins import NATIVE_TOOLS
from controller.validation import Name, Strict, load_yaml, parse

DTYPES = ("float32", "float16", "int64", "int32", "uint8")
DATASET_KINDS = ("ocr-det", "ocr-rec", "ocr-cls", "seeded")


class InputSpec(Strict):
    shape: list[int] = Field(description="fixed shape, batch first, e.g. [1, 3, 640, 640]")
    dtype: Literal["float32", "float16", "int64", "int32", "uint8"] = "float32"

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if not shape or any(d < 1 for d in shape):
            raise ValueError("every dimension must be a positive integer")
        return shape


class DatasetSpec(Strict):
    kind: Literal["ocr-det", "ocr-rec", "ocr-cls", "seeded"] = Field(
        "seeded", description="labelled data the project renders, or seeded inputs + fp32 outputs"
    )
    samples: int = Field(200, ge=1, le=100_000)
    seed: int = 0


class QuantizationSpec(Strict):
    calibration: Literal["minmax", "entropy", "percentile"] = "entropy"
    samples: int = Field(32, ge=1, le=10_000, description="calibration samples, never the evaluation ones")
    per_channel: bool = True
    op_types: list[str] | None = Field(
        None, description="quantize only these op types, e.g. [Conv, MatMul, Gemm]; default: every op ORT can")
    budget_samples: int = Field(
        256, ge=8, description="int8-mixed: samples the budget is checked on (the calibration set, extended)")
    ncnn_layers: list[Literal["Convolution", "ConvolutionDepthWise", "InnerProduct"]] = Field(
        ["Convolution"], min_length=1,
        description="ncnn int8: the layer types quantized (on x86 its int8 depthwise and inner-product layers "
                    "were slower than fp32; arm boards gain from them)")


class PruningSpec(Strict):
    """The pruned variant (controller.passes.pruning): structured channel pruning under the accuracy
    budget, then fine-tuning with distillation where torch is installed."""

    budget: float | None = Field(None, ge=0, description="accuracy drop allowed on calibration; default: selection's")
    target_flops: float | None = Field(
        None, gt=0, lt=1, description="share of the MACs to remove; default: 0.4 when fine-tuning, else the budget's")
    target_params: float | None = Field(None, gt=0, lt=1, description="share of the weights to remove")
    ratios: list[float] = Field([0.25, 0.5, 0.75], min_length=1, description="per-layer ratios the sensitivity tries")
    max_ratio: float = Field(0.75, gt=0, lt=1, description="most of one layer's channels ever cut")
    round_to: int = Field(8, ge=1, description="channels go in multiples of this (vector widths)")
    criterion: Literal["activation", "l1"] = "activation"
    samples: int = Field(256, ge=8, description="calibration samples the sensitivity and the budget are measured on")
    finetune: Literal["auto", "off"] = Field("auto", description="auto: fine-tune when torch is installed")
    distill: bool = Field(True, description="knowledge distillation from the fp32 model in the loss")
    train_samples: int = Field(4000, ge=64, description="freshly rendered fine-tuning samples")
    epochs: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0, lt=1, description="Adam's learning rate relative to each weight tensor's RMS")
    attempts: int = Field(2, ge=1, description="training runs, backing off towards surgery alone on a miss")
    max_seconds: float = Field(900.0, gt=0, description="longest fine-tuning run")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, ratios: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in ratios):
            raise ValueError(f"ratios must lie in (0, 1), got {ratios}")
        return sorted(set(ratios))


class ModelSpec(Strict):
    name: Name
    path: str = Field(description="a file path, or pkg:PACKAGE/inside/path for a file a package ships")
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    dataset: DatasetSpec = DatasetSpec()
    pruning: PruningSpec | None = Field(
        None, description="this model's pruning keys over the spec's own (a learning rate or a target per model)")

    def resolve_path(self, base: Path) -> Path:
        if self.path.startswith("pkg:"):
            package, _, inner = self.path[4:].partition("/")
            found = importlib.util.find_spec(package)
            if found is None or not found.submodule_search_locations:
                raise ConfigError(f"model {self.name}: path: package {package!r} is not installed")
            return Path(list(found.submodule_search_locations)[0]) / inner
        path = Path(self.path).expanduser()
        return path if path.is_absolute() else base / path


class EngineSpec(Strict):
    name: Name
    options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class MeasureSpec(Strict):
    warmup: int = Field(5, ge=0)
    min_iterations: int = Field(64, ge=64, description="at least 64 samples for a p90 figure")
    min_seconds: float = Field(2.0, ge=0)
    max_seconds: float = Field(120.0, gt=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    threads: list[int] | None = Field(
        None, description="thread counts to sweep, each its own configuration; default: the engine's or board's own")
    throughput_seconds: float = Field(1.0, gt=0)
    job_timeout: float = Field(1800.0, gt=0, description="seconds before a hung job is killed")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError("batch sizes must be positive integers")
        return sorted(set(sizes))

    @field_validator("threads")
    @classmethod
    def _threads(cls, threads: list[int] | None) -> list[int] | None:
        if threads is not None and (not threads or any(t < 1 for t in threads)):
            raise ValueError("thread counts must be positive integers")
        return sorted(set(threads)) if threads else None


class SelectionSpec(Strict):
    budget: float = Field(0.01, ge=0, description="largest accepted accuracy drop against fp32")
    objective: Literal["latency", "throughput"] = Field(
        "latency", description="lowest p50 at batch 1, or most items/s at any measured batch size")
    latency_ceiling_ms: float | None = Field(
        None, gt=0, description="throughput objective: a batch's p50 must stay under this")


class RegressionSpec(Strict):
    latency_threshold: float = Field(0.05, ge=0, description="relative change of the median")
    p_value: float = Field(0.01, gt=0, le=1, description="Mann-Whitney U significance level")
    accuracy_threshold: float = Field(0.01, ge=0, description="absolute drop of the task metric")


class Spec(Strict):
    name: Name
    models: list[ModelSpec] = Field(min_length=1)
    variants: list[str] = Field(default_factory=lambda: ["fp32", "fp16", "int8"])
    quantization: QuantizationSpec = QuantizationSpec()
    pruning: PruningSpec = PruningSpec()
    engines: list[EngineSpec] = Field(
        default_factory=lambda: [EngineSpec(name="onnxruntime"), EngineSpec(name="openvino")]
    )
    boards: list[Name] = Field(default_factory=lambda: ["local"])
    measure: MeasureSpec = MeasureSpec()
    selection: SelectionSpec = SelectionSpec()
    regression: RegressionSpec = RegressionSpec()

    @field_validator("engines", mode="before")
    @classmethod
    def _engine_names(cls, engines: object) -> object:
        # `engines: [onnxruntime, openvino]` is the common short form.
        if isinstance(engines, list):
            return [{"name": e} if isinstance(e, str) else e for e in engines]
        return engines

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, variants: list[str]) -> list[str]:
        from controller.passes import RECIPES

        for v in variants:
            if v not in RECIPES:
                raise ValueError(f"unknown variant {v!r}; known: {', '.join(RECIPES)}")
        if "fp32" not in variants:
            raise ValueError("fp32 is the reference every other variant is judged against; keep it")
        return list(dict.fromkeys(variants))

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, engines: list[EngineSpec]) -> list[EngineSpec]:
        from agent.engines import known_engines

        # An engine the agent runs, or one a board measures with its own benchmark tool.
        known = sorted(set(known_engines()) | {NATIVE_TOOLS.get(tool).engine for tool in NATIVE_TOOLS})
        for e in engines:
            if e.name not in known:
                raise ValueError(f"unknown engine {e.name!r}; known: {', '.join(known)}")
        return engines

    @model_validator(mode="after")
    def _unique_models(self) -> "Spec":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    def pruning_for(self, model: ModelSpec) -> PruningSpec:
        """The spec's pruning keys with the ones this model sets itself on top."""
        if model.pruning is None:
            return self.pruning
        return self.pruning.model_copy(update=model.pruning.model_dump(include=model.pruning.model_fields_set))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


class LoadedSpec(Strict):
    """A spec and the folder its relative model paths are read from."""

    spec: Spec
    source: str
    base: Path


def load_spec(path: Path) -> LoadedSpec:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a spec is a YAML mapping with at least 'name' and 'models'")
    spec = parse(Spec, data, str(path))
    return LoadedSpec(spec=spec, source=str(path), base=path.resolve().parent)


def parse_input_flag(flag: str) -> tuple[str, list[int]]:
    """``NAME=1x3x224x224`` -> ("NAME", [1, 3, 224, 224])."""
    name, sep, dims = flag.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = [int(d) for d in dims.lower().split("x")]
    except ValueError:
        raise ConfigError(f"--input {flag!r}: expected NAME=DIMS such as x=1x3x224x224") from None
    return name, shape


def spec_from_model(
    model: Path,
    inputs: list[str],
    variants: list[str] | None,
    engines: list[str] | None,
    samples: int = 64,
) -> LoadedSpec:
    """The spec behind ``edgefarm run --model``: seeded inputs, accuracy = agreement with fp32."""
    data: dict = {
        "name": _safe_name(model.stem),
        "models": [
            {
                "name": _safe_name(model.stem),
                "path": str(model.resolve()),
                "inputs": {n: {"shape": s} for n, s in map(parse_input_flag, inputs)},
                "dataset": {"kind": "seeded", "samples": samples},
            }
        ],
    }
    if variants:
        data["variants"] = variants
    if engines:
        data["engines"] = engines
    return LoadedSpec(spec=parse(Spec, data, "command line"), source="command line", base=Path.cwd())


def _safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._")
    return (cleaned or "model")[:64]

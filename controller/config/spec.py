"""The job spec: which models, variants, engines and boards, and how to measure and judge.

A spec is YAML written by people, so it is validated here, at the boundary, and every error
names the file, the key and the bad value. ``spec_from_model`` builds the same object from
``edgefarm run --model`` flags so that both paths share one validator.

The ``quantization`` and ``pruning`` sections are built from the variant passes' own options
models (``controller.passes``), so each option is declared, defaulted and described once, by the
pass that reads it: a section holds the fields of every pass whose options live under it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from controller.config.names import check_engine
from controller.config.task import BUILTIN_TASKS, PostprocessSpec, PreprocessSpec, parse_pairs
from controller.errors import ConfigError
from controller.passes import get_pass, pass_names
from controller.validation import Name, Strict, format_validation_error, load_yaml, parse, shown

DTYPES = ("float32", "float16", "int64", "int32", "uint8")
DATASET_KINDS = ("ocr-det", "ocr-rec", "ocr-cls", "seeded", "files")


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
    kind: Literal["ocr-det", "ocr-rec", "ocr-cls", "seeded", "files"] = Field(
        "seeded", description="labelled data the project renders, seeded inputs + fp32 outputs, or the "
        "user's own files (set by giving `path`)"
    )
    path: str | None = Field(
        None, description="your labelled images: a folder with one sub-folder per class, a CSV of path,label, "
        "or a COCO JSON file (relative to the spec's folder)")
    images: str | None = Field(None, description="COCO: the image folder (default: the JSON file's folder)")
    # strict: `samples: 2.5`, `samples: "200"` or `samples: true` is a mistake, not a count
    samples: int = Field(200, ge=1, le=100_000, strict=True,
                         description="evaluation samples (your files: at most this many, after the calibration split)")
    seed: int = Field(0, strict=True, description="rendering seed, or the seed of the calibration/evaluation split")

    @model_validator(mode="before")
    @classmethod
    def _path_form(cls, data: Any) -> Any:
        if isinstance(data, str):  # `dataset: data/pets` is the common short form
            return {"path": data, "kind": "files"}
        if isinstance(data, dict) and data.get("path") is not None and "kind" not in data:
            return {**data, "kind": "files"}
        return data

    @model_validator(mode="after")
    def _kind_fits(self) -> "DatasetSpec":
        if (self.kind == "files") != (self.path is not None):
            raise ValueError("your own data is given by `path` (kind files); a rendered kind takes no path"
                             if self.path is not None else "kind files needs the `path` of your data")
        if self.images is not None and self.path is None:
            raise ValueError("`images` is the image folder of a COCO `path`")
        return self

    def resolve(self, base: Path, key: str) -> Path:
        assert key in ("path", "images")
        value = getattr(self, key)
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path


def section_model(section: str, models: list[type[Strict]]) -> type[Strict]:
    """One model with the fields of every options model in ``models`` (their validators too): a
    field two passes both declare must be the same field (type, default, limits, description)."""
    fields: dict[str, tuple[type[Strict], str]] = {}
    for model in models:
        for name, info in model.model_fields.items():
            other = fields.setdefault(name, (model, repr(info)))
            if other[1] != repr(info):
                raise TypeError(f"spec section {section}: option {name} of {model.__qualname__} differs from "
                                f"{other[0].__qualname__}'s ({repr(info)} vs {other[1]})")
    # A model another one extends adds nothing: its fields and validators come with the subclass.
    leaves = tuple(dict.fromkeys(m for m in models if not any(o is not m and issubclass(o, m) for o in models)))
    if len(leaves) == 1:
        return leaves[0]
    union = create_model(f"{section.title()}Spec", __base__=leaves or (Strict,),
                         __doc__=f"The spec's {section} section: the options of its passes.")
    return cast(type[Strict], union)  # a subclass of its bases, all of them Strict


def _section(section: str) -> type[Strict]:
    """The spec section ``section``, from the options of every registered pass that reads it."""
    return section_model(section, [get_pass(n).options for n in pass_names() if get_pass(n).section == section])


if TYPE_CHECKING:  # what mypy sees: the sections as the built-in passes make them
    from controller.passes.int8_mixed import Int8MixedOptions
    from controller.passes.int8_nncf import NncfOptions
    from controller.passes.pruning.options import PruningOptions

    class QuantizationSpec(Int8MixedOptions, NncfOptions): ...

    class PruningSpec(PruningOptions): ...
else:
    QuantizationSpec = _section("quantization")
    PruningSpec = _section("pruning")


_TASK_OF_KIND = {"ocr-det": "ocr-det", "ocr-rec": "ocr-rec", "ocr-cls": "ocr-cls", "seeded": "raw"}


class ModelSpec(Strict):
    name: Name
    path: str = Field(min_length=1, description="a file path, or pkg:PACKAGE/inside/path for a file a package ships")
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    dataset: DatasetSpec = DatasetSpec()
    task: str | None = Field(
        None, description=f"{', '.join(BUILTIN_TASKS)}, or a Python file of your own task; default: from the "
        "dataset (a folder or CSV: classification, COCO JSON: detection; rendered kinds: their own; none: raw)")
    labels: str | None = Field(None, description="classification: class names, one per line, in output order")
    preprocess: PreprocessSpec | None = Field(None, description="how an image becomes the model's input")
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec, description="how outputs become predictions")
    pruning: PruningSpec | None = Field(
        None, description="this model's pruning keys over the spec's own (a learning rate or a target per model)")

    @model_validator(mode="after")
    def _task_fits(self) -> "ModelSpec":
        task, kind = self.task_name, self.dataset.kind
        if task not in BUILTIN_TASKS and not task.endswith(".py"):
            raise ValueError(f"task {task!r} is not one of {', '.join(BUILTIN_TASKS)}, nor a .py file of your own task")
        if kind == "files" and task in _TASK_OF_KIND.values():
            raise ValueError(f"task {task} does not read your files; with a dataset path the task is "
                             "classification, detection or your own .py")
        if kind != "files" and task != _TASK_OF_KIND[kind]:
            raise ValueError(f"task {task} needs labelled data: give the dataset's `path`"
                             if task in ("classification", "detection") or task.endswith(".py")
                             else f"task {task} is measured on dataset kind {task if task != 'raw' else 'seeded'}, "
                             f"not {kind}")
        if self.labels is not None and task != "classification":
            raise ValueError("labels name a classifier's classes; this model's task is " + task)
        if self.preprocess is not None and kind != "files":
            raise ValueError(f"preprocess applies to your own images; dataset kind {kind} makes its model's tensors itself")
        return self

    @property
    def task_name(self) -> str:
        """The task, as given or as the dataset implies."""
        if self.task is not None:
            return self.task
        if self.dataset.kind != "files":
            return _TASK_OF_KIND[self.dataset.kind]
        return "detection" if str(self.dataset.path).lower().endswith(".json") else "classification"

    def resolve_path(self, base: Path, source: str = "", key: str = "path") -> Path:
        """The model file: ``path`` relative to ``base``, or inside an installed package (a
        ``ConfigError`` naming ``source`` and ``key`` when that package is not installed)."""
        if self.path.startswith("pkg:"):
            package, _, inner = self.path[4:].partition("/")
            where = f"{source}: {key}" if source else f"model {self.name}: {key}"
            try:
                found = importlib.util.find_spec(package) if package else None
            except (ImportError, ValueError):  # a parent package missing, or a name like ".x"
                found = None
            if found is None or not found.submodule_search_locations:
                raise ConfigError(f"{where}: package {package!r} is not installed (got {self.path!r}); "
                                  "pkg:PACKAGE/inside/path names a file an installed package ships")
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
    e2e: bool = Field(
        True, description="also time the deployment runtime's whole pipeline (decode + preprocess + infer + "
        "postprocess) on a few evaluation image files, beside the engine's own p50")
    precision: float | None = Field(
        0.02, gt=0, lt=1, description="stop sampling once the 95% confidence interval of the median is within "
        "+/- this fraction of it (checked once min_iterations and min_seconds are reached; at the latest at max_seconds); "
        "null: stop as soon as min_iterations and min_seconds are both reached")
    slower_factor: float | None = Field(
        3.0, gt=1, description="a configuration whose median, at min_iterations and min_seconds, is this many times the best "
        "one within the accuracy budget on the same board stops there, with no accuracy, throughput or e2e "
        "figures: it cannot be chosen (latency objective only; null: measure everything in full)")

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
    finalist_margin: float = Field(
        0.10, ge=0, description="configurations within this fraction of the best p50 on a board are finalists: "
        "re-measured with the baseline in interleaved rounds (A B C A B C ...), and the table is built from those")
    rounds: int = Field(5, ge=0, description="interleaved rounds of the finalists (0: no re-measurement)")


class RegressionSpec(Strict):
    latency_threshold: float = Field(0.05, ge=0, description="relative change of the median")
    p_value: float = Field(0.01, gt=0, le=1, description="Mann-Whitney U significance level")
    accuracy_threshold: float = Field(0.01, ge=0, description="absolute drop of the task metric")
    history: int = Field(5, ge=2, description="the baseline of a benchmark: its last N good runs")
    band: float = Field(
        3.0, gt=0, description="the noise band: the baseline's median +/- this many run-to-run standard "
        "deviations of its runs' medians (pooled with a prior of 3% drift worth two runs, and never narrower "
        "than the spread of those runs)")
    confirm: int = Field(
        2, ge=0, description="re-runs of a suspected regression in the same night; it is reported only if "
        "every re-run reproduces it")


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
        known = pass_names()
        for v in variants:
            if v not in known:
                raise ValueError(f"unknown variant {v!r}; known: {', '.join(known)}")
        if "fp32" not in variants:
            raise ValueError("fp32 is the reference every other variant is judged against; keep it")
        return list(dict.fromkeys(variants))

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, engines: list[EngineSpec]) -> list[EngineSpec]:
        # An engine the agent runs, or one a board measures with its own benchmark tool.
        for e in engines:
            check_engine(e.name)
        _once("engines", [e.name for e in engines])
        return engines

    @field_validator("boards")
    @classmethod
    def _boards_once(cls, boards: list[str]) -> list[str]:
        _once("boards", boards)
        return boards

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

    def options_for(self, variant: str, model: ModelSpec) -> BaseModel:
        """The options the pass of ``variant`` runs with for ``model``: its own fields of its
        section (a model's own pruning keys over the spec's), in its own options model."""
        kind = get_pass(variant)
        sections: dict[str | None, BaseModel | None] = {
            "quantization": self.quantization, "pruning": self.pruning_for(model), None: None}
        section = sections[kind.section]
        values = section.model_dump(include=set(kind.options.model_fields)) if section is not None else {}
        return kind.options.model_validate(values)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def _once(key: str, names: list[str]) -> None:
    """Each engine and board once: a second entry would measure the same jobs again, and stored
    results could not tell the two apart."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{', '.join(map(repr, twice))} given twice in {key}; give each once")


class LoadedSpec(Strict):
    """A spec and the folder its relative model paths are read from."""

    spec: Spec
    source: str
    base: Path


def load_spec(path: Path) -> LoadedSpec:
    data = load_yaml(path, "a spec is a YAML mapping with at least 'name' and 'models'")
    spec = parse(Spec, data, str(path))
    base = path.resolve().parent
    for i, m in enumerate(spec.models):  # a pkg: path whose package is missing: named here, with its key
        m.resolve_path(base, str(path), f"models.{i}.path")
    return LoadedSpec(spec=spec, source=str(path), base=base)


_INPUT_FORM = "expected NAME=DIMS such as x=1x3x224x224"


def parse_input_flag(flag: str) -> tuple[str, list[int]]:
    """``NAME=1x3x224x224`` -> ("NAME", [1, 3, 224, 224]); a ``ConfigError`` naming the flag."""
    name, sep, dims = flag.partition("=")
    name = name.strip()
    if not sep:
        raise ConfigError(f"--input {flag!r}: {_INPUT_FORM}")
    if not name:
        raise ConfigError(f"--input {flag!r}: no input name before '='; {_INPUT_FORM}")
    if not dims.strip():
        raise ConfigError(f"--input {flag!r}: no dimensions after '='; {_INPUT_FORM}")
    shape = []
    for d in dims.lower().split("x"):
        try:
            shape.append(int(d))
        except ValueError:
            raise ConfigError(f"--input {flag!r}: dimension {d.strip()!r} is not a whole number; {_INPUT_FORM}") from None
    bad = [d for d in shape if d < 1]
    if bad:
        raise ConfigError(f"--input {flag!r}: dimension {bad[0]} is not positive; every dimension is a whole "
                          f"number >= 1, {_INPUT_FORM}")
    return name, shape


def _names_flag(given: list[str] | str | None) -> tuple[list[str] | None, str]:
    """A comma-separated flag's names, and the value as the user wrote it (for messages)."""
    if given is None:
        return None, ""
    if isinstance(given, str):
        return [x.strip() for x in given.split(",") if x.strip()], given
    return list(given), ",".join(given)


def _model_inputs(model: Path) -> list[str] | None:
    """The names of a model's graph inputs (its initializers aside), or None when the file cannot
    be read as ONNX: the source check (``controller.build.source``) says why, in its own line."""
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - any reading problem is reported by the source check
        return None
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def spec_from_model(
    model: Path,
    inputs: list[str],
    variants: list[str] | str | None,
    engines: list[str] | str | None,
    samples: int = 64,
    *,
    dataset: Path | None = None,
    task: str | None = None,
    labels: Path | None = None,
    preprocess: list[str] | None = None,
    postprocess: list[str] | None = None,
) -> LoadedSpec:
    """The spec behind ``edgefarm run --model``: seeded inputs, accuracy = agreement with fp32; or,
    with ``dataset``, the task's metric on the user's labelled images (``--task``, ``--labels``,
    ``--preprocess KEY=VALUE``, ``--postprocess KEY=VALUE``).

    ``variants`` and ``engines`` are the flags' names (or their comma-separated text); every
    error names the flag and the value given, as the user typed it."""
    source = f"--model {model}"
    flags: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for flag in inputs:
        name, shape = parse_input_flag(flag)
        if name in flags:
            raise ConfigError(f"--input {flags[name]!r} and --input {flag!r}: the input {name!r} is given twice; "
                              "give each input once")
        flags[name], shapes[name] = flag, shape
    names = _model_inputs(model) if shapes and model.is_file() else None
    unknown = [n for n in shapes if names is not None and n not in names]
    if names is not None and unknown:
        raise ConfigError(f"--input {flags[unknown[0]]!r}: {model} has no input {unknown[0]!r}; "
                          f"its inputs: {', '.join(names) or '(none)'}")
    variant_names, variants_text = _names_flag(variants)
    engine_names, engines_text = _names_flag(engines)
    data: dict = {
        "name": _safe_name(model.stem),
        "models": [
            {
                "name": _safe_name(model.stem),
                "path": str(model.resolve()),
                "inputs": {n: {"shape": s} for n, s in shapes.items()},
                "dataset": {"kind": "seeded", "samples": samples},
            }
        ],
    }
    pairs: dict[str, dict[str, str]] = {}
    if dataset is not None:
        entry = data["models"][0]
        entry["dataset"] = {"path": str(dataset.resolve())}
        for key, value in (("task", task), ("labels", str(labels.resolve()) if labels else None)):
            if value is not None:
                entry[key] = value
        for flag, given in (("preprocess", preprocess), ("postprocess", postprocess)):
            try:
                pairs[flag] = parse_pairs(given or [], f"--{flag}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if pairs[flag]:
                entry[flag] = pairs[flag]

    if variant_names is not None:
        data["variants"] = variant_names
    if engine_names is not None:
        data["engines"] = engine_names
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc, message = tuple(first["loc"]), str(first["msg"]).removeprefix("Value error, ")
        if loc[:1] == ("variants",):
            raise ConfigError(f"--variants {variants_text!r}: {message}") from None
        if loc[:1] == ("engines",):
            raise ConfigError(f"--engines {engines_text!r}: {message}") from None
        if loc[:3] in (("models", 0, "preprocess"), ("models", 0, "postprocess")):
            flag = str(loc[2])
            if len(loc) == 3:  # keys that contradict each other: all of them, as typed
                raise ConfigError(f"--{flag} {' '.join(f'{k}={v}' for k, v in pairs.get(flag, {}).items())!r}: "
                                  f"{message}") from None
            key = str(loc[3])
            given_as = f"{key}={pairs[flag][key]}" if key in pairs.get(flag, {}) else key
            known = ", ".join((PreprocessSpec if flag == "preprocess" else PostprocessSpec).model_fields)
            raise ConfigError(f"--{flag} {given_as!r}: {message}" + (f"; keys: {known}" if "extra" in first["type"]
                                                                   else "")) from None
        if loc == ("models", 0) and message.startswith("labels ") and labels is not None:
            raise ConfigError(f"--labels {str(labels)!r}: {message}") from None
        if loc[:3] == ("models", 0, "dataset") or loc == ("models", 0):  # the data and the task together
            raise ConfigError(f"--data {str(dataset)!r}: {message}") from None
        if loc[:3] == ("models", 0, "inputs") and len(loc) > 3 and loc[3] in flags:
            raise ConfigError(f"--input {flags[str(loc[3])]!r}: {message} (got {shown(first.get('input'))})") from None
        raise ConfigError(format_validation_error(source, exc, Spec, data)) from None
    return LoadedSpec(spec=spec, source=source, base=Path.cwd())


def _safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._")
    return (cleaned or "model")[:64]

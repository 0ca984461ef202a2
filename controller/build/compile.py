"""Build every artifact a run needs: prepared sources, datasets, and variants, cached by content.

Compilation and data rendering are Ray tasks that take and return bytes, so they run on any
node of a cluster; the driver alone reads and writes the cache. A variant that fails to
compile is recorded (its jobs become failed rows), it does not stop the run.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from agent.protocol import sha256_file
from controller.build.cache import Cache, key_of
from controller.build.e2e_images import images_artifact
from controller.build.source import Prepared, prepare
from controller.build.task_data import TaskData
from controller.config.spec import LoadedSpec, ModelSpec, Spec
from controller.errors import ModelError, one_line
from controller.passes import get_pass

PREPARE_VERSION = 1
CALIBRATION_SEED_OFFSET = 1_000_003  # calibration never sees an evaluation sample


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    size: int
    meta: dict[str, Any]


@dataclass
class ModelBuild:
    spec: ModelSpec
    prepared: Prepared
    task: str
    dataset: Artifact
    inputs: Artifact  # the first samples of the dataset, for latency and throughput
    variants: dict[str, Artifact] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # variant -> why it did not compile
    calibration: Artifact | None = None  # calibration samples, when anything quantizes
    task_module: Artifact | None = None  # a user's own task: its module, shipped with every job
    images: Artifact | None = None  # a few evaluation image files (a tar), for the end-to-end figures


def _versions() -> dict[str, str]:
    """The tools whose upgrade changes a variant: part of every variant's cache key."""
    from importlib import metadata

    return {name: metadata.version(name) for name in ("onnx", "onnxruntime", "nncf")}


def _artifact(path: Path, meta: dict[str, Any]) -> Artifact:
    return Artifact(path, sha256_file(path), path.stat().st_size, meta)


# --- Ray tasks: bytes in, bytes out -------------------------------------------------------

def _task_pass(name: str, source: bytes, fp32: bytes | None, calibration: bytes | None, budget: float | None,
               options: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    from controller.passes import PassInput, run_pass

    with tempfile.TemporaryDirectory(prefix="edgefarm-compile-") as tmp:
        d = Path(tmp)
        (d / "source.onnx").write_bytes(source)
        if fp32 is not None:
            (d / "fp32.onnx").write_bytes(fp32)
        if calibration is not None:
            (d / "calibration.npz").write_bytes(calibration)
        out = d / "out.onnx"
        meta = run_pass(
            name,
            PassInput(d / "source.onnx", d / "fp32.onnx" if fp32 is not None else None,
                      d / "calibration.npz" if calibration is not None else None, budget),
            out,
            options,
        )
        return out.read_bytes(), meta


def _task_dataset(kind: str, inputs: dict[str, tuple[tuple[int, ...], str]], samples: int, seed: int,
                  model: bytes) -> tuple[bytes, dict[str, Any]]:
    from controller.data.datasets import make_dataset

    with tempfile.TemporaryDirectory(prefix="edgefarm-data-") as tmp:
        d = Path(tmp)
        (d / "model.onnx").write_bytes(model)
        meta = make_dataset(kind, inputs, samples, seed, d / "data.npz", model_path=d / "model.onnx")
        return (d / "data.npz").read_bytes(), meta


# --- the driver ---------------------------------------------------------------------------

def prepare_sources(loaded: LoadedSpec, cache: Cache) -> dict[str, Prepared]:
    """Check and prepare every model first, so a bad model fails the run before any work."""
    from controller.data.datasets import check_inputs

    out = {}
    for m in loaded.spec.models:
        label = f"{loaded.source}: model {m.name}"
        shapes = {n: i.shape for n, i in m.inputs.items()}
        # Rewritten on every run (it takes well under a second); its content hash is what
        # the variant cache keys on.
        target = cache.path("sources", key_of(model=m.name, shapes=shapes, v=PREPARE_VERSION), ".onnx")
        prepared = prepare(m.resolve_path(loaded.base), label, shapes, target)
        try:
            if m.dataset.kind != "files":  # the user's files are checked with their task (check_datasets)
                check_inputs(m.dataset.kind, {i.name: (i.shape, i.dtype) for i in prepared.inputs})
        except ValueError as exc:
            raise ModelError(f"{label}: dataset {m.dataset.kind}: {exc}") from None
        out[m.name] = prepared
    return out


class _Tasks:
    """Ray tasks whose artifacts are cached by key: a hit is used at once, a miss is submitted,
    and ``wait`` stores each result as it arrives (a failure is recorded, never cached)."""

    def __init__(self, cache: Cache, on_step: Callable[[str], None]) -> None:
        self.cache, self.on_step = cache, on_step
        self.pending: dict[Any, tuple[str, str, str, str, Callable[[Artifact], None]]] = {}

    def get(self, what: str, kind: str, key: str, suffix: str, submit: Callable[[], Any],
            done: Callable[[Artifact], None]) -> None:
        """``what`` names the step for progress, e.g. "ppocr-det int8" or "ppocr-det int8 -> ncnn (x86)".
        ``submit`` is called here, on a miss; ``done`` here on a hit, else when the task ends."""
        hit = self.cache.lookup(kind, key, suffix)
        if hit:
            done(_artifact(*hit))
            self.on_step(f"{what}: cached")
        else:
            self.pending[submit()] = (what, kind, key, suffix, done)

    def take(self, ref: Any) -> None:
        """Store the artifact of ``ref``, one of ``pending`` that Ray says is ready."""
        import ray

        what, kind, key, suffix, done = self.pending.pop(ref)
        try:
            data, meta = ray.get(ref)
        except Exception as exc:  # recorded on its variant or job, and never cached
            done(Artifact(Path(), "", 0, {"error": one_line(exc)}))
            self.on_step(f"{what}: failed")
        else:
            done(_artifact(self.cache.store(kind, key, suffix, data, meta), meta))
            self.on_step(f"{what}: {'failed' if 'error' in meta else 'done'}")

    def wait(self) -> None:
        import ray

        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            self.take(ready[0])


def build_all(loaded: LoadedSpec, cache: Cache, prepared: dict[str, Prepared], user_data: dict[str, TaskData] | None = None,
              on_step: Callable[[str], None] = lambda _msg: None) -> list[ModelBuild]:
    """``user_data``: the datasets already built from the user's files (``controller.build.task_data``)."""
    import ray

    from controller.data.datasets import DATASET_VERSION, TASK_OF_KIND, write_subset

    spec = loaded.spec
    versions = _versions()
    # max_calls=1: each task's worker process exits when it is done. Idle workers left behind
    # by quantization kept the local board busy: ONNX Runtime measured the detector at 89 ms
    # after a cold compile and at 51 ms after a cached one.
    pass_task = ray.remote(max_calls=1)(_task_pass)
    dataset_task = ray.remote(max_calls=1)(_task_dataset)
    builds: list[ModelBuild] = []
    tasks = _Tasks(cache, on_step)

    # Wave 1: datasets (evaluation + calibration) and the fused fp32 variant of every model.
    for m in spec.models:
        p = prepared[m.name]
        source_bytes = p.path.read_bytes()
        shapes = {i.name: (i.shape, i.dtype) for i in p.inputs}
        ref = ray.put(source_bytes)
        if m.name in (user_data or {}):
            td = (user_data or {})[m.name]
            build = ModelBuild(m, p, td.setup.task, dataset=_artifact(td.evaluation, {"split": td.split}),
                               inputs=None)  # type: ignore[arg-type]
            build.calibration = _artifact(td.calibration, {}) if td.calibration else None
            build.task_module = _artifact(td.setup.module, {}) if td.setup.module else None
            builds.append(build)
        else:
            build = ModelBuild(m, p, TASK_OF_KIND[m.dataset.kind], dataset=None, inputs=None)  # type: ignore[arg-type]
            builds.append(build)
            _render_data(tasks, dataset_task, spec, m, build, shapes, ref, DATASET_VERSION, p.sha256)
        tasks.get(
            f"{m.name} fp32", "variants", _variant_key("fp32", p.sha256, None, None, {}, versions), ".onnx",
            lambda: pass_task.remote("fp32", ref, None, None, None, {}),
            partial(_record, build, "fp32"),
        )
    tasks.wait()

    # Wave 2: variants built from the fused fp32 artifact.
    for build in builds:
        if build.dataset.size == 0:
            raise ModelError(f"{loaded.source}: model {build.spec.name}: dataset {build.spec.dataset.kind}: "
                             f"{build.dataset.meta.get('error')}")
        fp32 = build.variants.get("fp32")
        for name in spec.variants:
            variant_pass = get_pass(name)
            if name == "fp32" or variant_pass.starts_from != "fp32":
                continue
            if fp32 is None:
                build.failures[name] = "fp32 did not compile"
                continue
            options = _pass_options(name, spec, build.spec)
            calib = build.calibration if variant_pass.calibrated else None
            if variant_pass.calibrated and calib is None:
                build.failures[name] = "no calibration data"
                continue
            budget = spec.selection.budget if variant_pass.budgeted else None
            tasks.get(
                f"{build.spec.name} {name}", "variants",
                _variant_key(name, fp32.sha256, calib.sha256 if calib else None, budget, options, versions), ".onnx",
                lambda: pass_task.remote(name, b"", fp32.path.read_bytes(), calib.path.read_bytes() if calib else None,
                                         budget, options),
                partial(_record, build, name),
            )
    tasks.wait()

    for build in builds:
        # A few different real samples for latency (the agent cycles through them), and
        # enough for the largest throughput batch.
        count = min(build.spec.dataset.samples, max(8, *spec.measure.batch_sizes))
        key = key_of(kind="inputs", dataset=build.dataset.sha256, count=count)
        hit = cache.lookup("inputs", key, ".npz")
        if hit is None:
            target = cache.path("inputs", key, ".npz")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_subset(build.dataset.path, count, target)
            target.with_suffix(".npz.json").write_text("{}")
            hit = (target, {})
        build.inputs = _artifact(*hit)
        if spec.measure.e2e:
            found = images_artifact(loaded, build.spec, build.task, build.dataset.path, build.dataset.sha256,
                                    (user_data or {}).get(build.spec.name), cache)
            build.images = _artifact(*found) if found else None
    return builds


def _render_data(tasks: _Tasks, dataset_task: Any, spec: Spec, m: ModelSpec, build: ModelBuild,
                 shapes: dict[str, tuple[tuple[int, ...], str]], ref: Any, version: int, model_sha: str) -> None:
    """Render (or find cached) the evaluation data and, when anything quantizes, the calibration data."""
    data_key = dict(kind=m.dataset.kind, shapes=shapes, v=version, model=model_sha)
    tasks.get(
        f"{m.name} evaluation data", "datasets",
        key_of(samples=m.dataset.samples, seed=m.dataset.seed, **data_key), ".npz",
        lambda: dataset_task.remote(m.dataset.kind, shapes, m.dataset.samples, m.dataset.seed, ref),
        partial(setattr, build, "dataset"),
    )
    if _needs_calibration(spec):
        q = spec.quantization
        seed = m.dataset.seed + CALIBRATION_SEED_OFFSET
        tasks.get(
            f"{m.name} calibration data", "datasets", key_of(samples=q.samples, seed=seed, **data_key), ".npz",
            lambda: dataset_task.remote(m.dataset.kind, shapes, q.samples, seed, ref),
            partial(_calibration_done, build),
        )


def _calibration_done(build: ModelBuild, artifact: Artifact) -> None:
    build.calibration = artifact if artifact.size else None


def _needs_calibration(spec: Spec) -> bool:
    return any(get_pass(v).calibrated for v in spec.variants)


def _pass_options(name: str, spec: Spec, model: ModelSpec) -> dict[str, Any]:
    """The options the variant's pass runs with (its own fields of its spec section, validated by
    its options model), as the cache keys and the converters that quantize themselves see them."""
    return spec.options_for(name, model).model_dump()


# --- conversions for engines that do not read ONNX ------------------------------------------

@dataclass(frozen=True)
class ConvertRequest:
    """One conversion a run needs: a model's variant for an engine and target."""

    model: str
    variant: str
    engine: str
    target: str


def _task_convert(engine: str, variant: str, precision: str, target: str, model: bytes, fp32: bytes,
                  calibration: bytes | None, options: dict[str, Any], tools: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """One conversion, on whichever node Ray chose; ``tools``: the converter's tool versions on the
    driver, which the artifact is cached under."""
    from controller.convert import ConvertInput, converter_for

    converter = converter_for(engine)
    assert converter is not None
    here = converter.tool_versions()
    if here != tools:  # another host's tools would make another artifact than the cache key says
        import ray

        node = ray.get_runtime_context().get_node_id()  # raised, not returned: a failure is never cached
        raise RuntimeError(f"the converter's tools on Ray node {node[:12]} are {here}, not the controller's {tools}")
    with tempfile.TemporaryDirectory(prefix="edgefarm-convert-") as tmp:
        d = Path(tmp)
        (d / "model.onnx").write_bytes(model)
        (d / "fp32.onnx").write_bytes(fp32)
        if calibration is not None:
            (d / "calibration.npz").write_bytes(calibration)
        out = d / ("out" + converter.suffix)
        start = time.monotonic()
        meta = converter.convert(ConvertInput(
            variant, precision, d / "model.onnx", d / "fp32.onnx",
            d / "calibration.npz" if calibration is not None else None, target, options), out)
        # How long converting took (kept with the cached artifact): what bench/makespan.py draws on.
        return out.read_bytes(), {**meta, "seconds": round(time.monotonic() - start, 3)}


def start_conversions(spec: Any, builds: list[ModelBuild], requests: set[ConvertRequest], cache: Cache,
                      landed: Callable[[ConvertRequest, Artifact], None], on_step: Callable[[str], None] = lambda _msg: None,
                      task_options: dict[str, Any] | None = None) -> _Tasks:
    """Start every requested conversion, cached by content. ``landed(request, artifact)`` is called
    for each as it is done: here for a cache hit, else from the returned tasks' ``take`` (or
    ``wait``). A failed conversion is an Artifact with an error, never raised. ``task_options``:
    Ray's options for the conversion tasks (where they may run)."""
    import ray

    from controller.convert import converter_for

    by_name = {b.spec.name: b for b in builds}
    task = ray.remote(max_calls=1)(_task_convert).options(**(task_options or {}))
    tasks = _Tasks(cache, on_step)
    for r in sorted(requests, key=lambda r: (r.model, r.variant, r.engine, r.target)):
        build = by_name[r.model]
        converter = converter_for(r.engine)
        variant, fp32 = build.variants.get(r.variant), build.variants.get("fp32")
        if converter is None or variant is None or fp32 is None:
            landed(r, Artifact(Path(), "", 0, {"error": "nothing to convert"}))
            continue
        variant_pass = get_pass(r.variant)
        calib = build.calibration if variant_pass.calibrated else None
        try:
            tools = converter.tool_versions()
        except Exception as exc:  # a missing tool fails these jobs, with the reason
            landed(r, Artifact(Path(), "", 0, {"error": one_line(exc)}))
            continue
        options = _pass_options(r.variant, spec, build.spec)  # an engine that quantizes itself follows the spec
        key = key_of(kind="conversion", engine=r.engine, v=converter.version, target=r.target, tools=tools,
                     variant=r.variant, model=variant.sha256, fp32=fp32.sha256,
                     calibration=calib.sha256 if calib else None, options=options)
        tasks.get(
            f"{r.model} {r.variant} -> {r.engine} ({r.target})", "conversions", key, converter.suffix,
            lambda: task.remote(
                r.engine, r.variant, variant_pass.precision, r.target, variant.path.read_bytes(),
                fp32.path.read_bytes(), calib.path.read_bytes() if calib else None, options, tools),
            partial(landed, r),
        )
    return tasks


def _variant_key(name: str, input_sha: str, calib_sha: str | None, budget: float | None, options: dict[str, Any],
                 versions: dict[str, str]) -> str:
    """A variant's cache key: its pass and that pass's own version, what it reads, its options, and
    the libraries that make it."""
    variant_pass = get_pass(name)
    return key_of(kind="variant", variant=name, pass_version=variant_pass.version, input=input_sha,
                  calibration=calib_sha, budget=budget, options=options, precision=variant_pass.precision,
                  **variant_pass.environment(), **versions)


def _record(build: ModelBuild, name: str, artifact: Artifact) -> None:
    if artifact.size == 0 or "error" in artifact.meta:
        build.failures[name] = str(artifact.meta.get("error", "empty artifact"))
    else:
        build.variants[name] = artifact


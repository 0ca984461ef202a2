"""Planning a run: which jobs each board gets, in which configurations, and what each job sends.

Pure functions of the spec, the boards' probes and the builds: no Ray, no database, no board,
so every planning rule is tested on its own. Engine-specific rules live with the engine
(``Engine.configurations`` in the agent), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import JobRecord, Stage, make_job
from controller.build.compile import Artifact, ConvertRequest, ModelBuild
from controller.config.inventory import BoardSpec
from controller.config.spec import Spec
from controller.passes import get_pass


@dataclass
class Planned:
    """One job of a run: a model's variant on one board's engine, in one configuration."""

    board: str
    model: ModelBuild
    variant: str
    engine: str
    options: dict[str, Any]
    label: str
    target: str = ""  # the converter's target, for an engine that does not read ONNX
    artifact: Artifact | None = None  # what the board loads, when it is not the ONNX variant
    row_id: int = 0
    failure: tuple[Stage, str] | None = None  # (stage, message) when it cannot even be sent
    stored: bool = False  # a resumed run already has its result

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.board, self.model.spec.name, self.variant, self.engine, self.label)

    def describe(self) -> str:
        return f"{self.model.spec.name} {self.label} {self.engine}"


def plan_board(board: BoardSpec, probe: dict[str, Any], builds: list[ModelBuild], spec: Spec) -> list[Planned]:
    """Every job ``board`` gets: model x variant x engine x configuration (x thread count)."""
    engines_found = probe.get("engines", {})
    arch = (probe.get("fingerprint") or {}).get("arch") or ""
    plan = []
    for build in builds:
        for variant in spec.variants:
            for eng in spec.engines:
                if board.engines is not None and eng.name not in board.engines:
                    continue
                # The board's own options (its accelerators) first; the spec may still override.
                base = {"model_precision": get_pass(variant).precision,
                        **board.engine_options.get(eng.name, {}), **eng.options}
                if "threads" not in eng.options and (board.threads or board.cpus):
                    # Pinned to n cores, an engine that starts a thread per core would oversubscribe.
                    base["threads"] = board.threads or len(board.cpus or [])
                info = engines_found.get(eng.name, {})
                target = converter_target(board, eng.name, arch)
                for label, options in thread_sweep(spec, eng.options, configurations(eng.name, variant, info, base)):
                    p = Planned(board.name, build, variant, eng.name, options, label, target)
                    if variant in build.failures:
                        p.failure = ("convert", f"variant {variant} did not compile: {build.failures[variant]}")
                    elif not info.get("available"):
                        p.failure = ("load", f"engine {eng.name} is not available on board {board.name}: "
                                             f"{info.get('reason') or 'not found'}")
                    plan.append(p)
    return plan


def configurations(engine: str, variant: str, info: dict[str, Any],
                   base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The configurations one (variant, engine) pair is measured in, as the engine itself says
    (an engine a board measures with a native tool has one)."""
    from agent.engines import ENGINES

    if engine not in ENGINES:
        return [(variant, base)]
    return ENGINES.get(engine).configurations(variant, info, base)


def thread_sweep(spec: Spec, engine_options: dict[str, Any],
                 configs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each configuration once per thread count of ``measure.threads`` ("int8/t2"), unless the
    spec fixes the engine's threads itself."""
    threads = spec.measure.threads
    if not threads or "threads" in engine_options:
        return configs
    return [(f"{label}/t{t}", {**options, "threads": t}) for label, options in configs for t in threads]


def converter_target(board: BoardSpec, engine: str, arch: str) -> str:
    """The converter target for ``engine`` on ``board`` ("" when the engine reads ONNX)."""
    from controller.convert import converter_for

    converter = converter_for(engine)
    if converter is None:
        return ""
    return str(board.engine_options.get(engine, {}).get("target") or converter.default_target(arch))


def conversions(plan: list[Planned]) -> dict[ConvertRequest, list[Planned]]:
    """The conversions the plan needs, each with the jobs waiting for it."""
    wanted: dict[ConvertRequest, list[Planned]] = {}
    for p in plan:
        if p.target and not p.failure:
            wanted.setdefault(ConvertRequest(p.model.spec.name, p.variant, p.engine, p.target), []).append(p)
    return wanted


def attach_conversion(jobs: list[Planned], artifact: Artifact) -> None:
    """Give the jobs waiting for a conversion its output, or the reason it has none."""
    for p in jobs:
        if artifact.size == 0:
            why = artifact.meta.get("error") or "nothing to convert"
            p.failure = ("convert", f"{p.engine} conversion ({p.target}) of {p.variant} failed: {why}")
        else:
            p.artifact = artifact


def job_payload(p: Planned, spec: Spec) -> JobRecord:
    """The job record the board's agent (or native tool) is sent; the session fills in the artifacts."""
    m = spec.measure
    first_input = p.model.prepared.inputs[0]
    return make_job(
        f"job-{p.row_id}", p.engine, p.options,
        {"warmup": m.warmup, "min_iterations": m.min_iterations, "min_seconds": m.min_seconds,
         "max_seconds": m.max_seconds, "batch_sizes": m.batch_sizes, "throughput_seconds": m.throughput_seconds,
         "precision": m.precision},
        # What a native benchmark tool is asked for, where the board measures this engine with one.
        native={"warmup": m.warmup, "iterations": m.min_iterations, "threads": p.options.get("threads"),
                "precision": p.options.get("precision"),
                "input_shape": [d if isinstance(d, int) else 1 for d in first_input.shape]},
    )


def job_files(p: Planned) -> dict[str, tuple[Path, str]]:
    """The files a job needs on the board, by role: (local path, sha256)."""
    art = p.artifact or p.model.variants[p.variant]
    files = {
        "model": (art.path, art.sha256),
        "inputs": (p.model.inputs.path, p.model.inputs.sha256),
        "dataset": (p.model.dataset.path, p.model.dataset.sha256),
    }
    if p.model.task_module is not None:  # a user's own task: its postprocessing runs on the board
        files["task"] = (p.model.task_module.path, p.model.task_module.sha256)
    if p.model.images is not None:  # measure.e2e: the agent also times the whole pipeline on these
        files["images"] = (p.model.images.path, p.model.images.sha256)
    return files

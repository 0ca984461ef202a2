"""A run: validate, compile, plan jobs, run them on boards through Ray, store every result.

One Ray actor per board runs that board's jobs one at a time (a board measures one job at a
time, or the figures lie); boards run in parallel. The driver alone writes the database and
commits after every job, so whatever was measured before an interruption stays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.boards.health import Golden, engine_for, golden, record
from controller.build.cache import Cache
from controller.build.compile import Artifact, ConvertRequest, ModelBuild, build_all, convert_all, prepare_sources
from controller.config.inventory import Board, Inventory
from controller.config.spec import LoadedSpec, Spec
from controller.errors import EdgeFarmError, one_line
from controller.passes import PRECISION
from controller.results.store import Board as BoardRow
from controller.results.store import Job, Model, Result, Run, Variant, now, open_db
from controller.run.progress import RunProgress
from controller.workspace import cache_dir, workspace


@dataclass
class Planned:
    board: str
    model: ModelBuild
    variant: str
    engine: str
    options: dict[str, Any]
    label: str
    target: str = ""  # the converter's target, for an engine that does not read ONNX
    artifact: Artifact | None = None  # what the board loads, when it is not the ONNX variant
    row_id: int = 0
    failure: tuple[str, str] | None = None  # (stage, message) when it cannot even be sent
    stored: bool = False  # a resumed run already has its result

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.board, self.model.spec.name, self.variant, self.engine, self.label)


@dataclass
class RunOutcome:
    run_id: int
    ok: int = 0
    failed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # board -> why it ran nothing
    resumed: int = 0  # jobs a resumed run found already stored


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        _check_reachable(address)  # Ray itself would retry a dead address for minutes
    # "local" starts a private Ray instead of joining whatever RAY_ADDRESS points at.
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise EdgeFarmError(
            f"--ray-address {address}: cannot join the Ray cluster ({one_line(exc)}); if the cluster uses "
            "token authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None


def _check_reachable(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise EdgeFarmError(f"--ray-address {address}: no Ray head answers there ({exc}); "
                            "start one with `ray start --head` or leave the flag out for a local Ray") from None


def _actor_class() -> Any:
    import ray

    from controller.boards.session import BoardSession

    # num_cpus=0: an actor mostly waits on its board; it must not take a compile task's core.
    @ray.remote(num_cpus=0)
    class BoardActor:
        def __init__(self, board: Board, bundle: Path) -> None:
            self.session = BoardSession(board, bundle)

        def start(self) -> dict[str, Any]:
            return self.session.start()

        def health(self, golden: dict[str, tuple[Path, str]], engine: str | None) -> str | None:
            return self.session.health_check(golden, engine)

        def run_job(self, job: dict[str, Any], files: dict[str, tuple[Path, str]], timeout: float) -> dict[str, Any]:
            return self.session.run_job(job, files, timeout)

        def close(self) -> None:
            self.session.close()

    return BoardActor


def execute(loaded: LoadedSpec, inventory: Inventory, inventory_source: str, db_url: str | None,
            ray_address: str | None = None, kind: str = "run", resume: int | None = None) -> RunOutcome:
    """Run a spec on its boards; with ``resume``, finish that run's missing jobs instead."""
    import ray

    from controller.boards.agent_bundle import build_agent_bundle

    spec = loaded.spec
    boards = [inventory.board(name, inventory_source) for name in spec.boards]
    cache = Cache(cache_dir())
    prepared = prepare_sources(loaded, cache)  # a bad model stops here, before any run row exists
    ensure_ray(ray_address)

    sessions = open_db(db_url)
    with sessions() as db:
        run = _resumed_run(db, resume, spec) if resume else Run(
            spec_name=spec.name, spec_sha256=spec.digest(), spec=spec.model_dump(mode="json"),
            spec_base=str(loaded.base), kind=kind)
        run.status = "running"
        db.add(run)
        db.commit()
        outcome = RunOutcome(run.id)

    progress = RunProgress()
    actors: dict[str, Any] = {}
    probes: dict[str, dict[str, Any]] = {}
    try:
        with progress.stage("compile variants and render data", total=None) as step:
            builds = build_all(loaded, cache, prepared, on_step=step)
        bundle = build_agent_bundle(workspace() / "agent")
        with sessions() as db:
            outcome.skipped.update(_quarantined(db, boards))
        actor_cls = _actor_class()
        actors.update({b.name: actor_cls.options(max_concurrency=b.concurrency).remote(b, bundle)
                       for b in boards if b.name not in outcome.skipped})
        probes.update(_start_boards(sessions, boards, actors, outcome, golden(cache)))

        plan = [p for b in boards if b.name in probes for p in _plan_board(b, probes[b.name], builds, spec)]
        with progress.stage("convert for engines", total=None) as step:
            _convert(spec, plan, builds, cache, step)
        with sessions() as db:
            plan = _store_plan(db, run.id, plan, resuming=resume is not None)
            db.commit()
        outcome.resumed = sum(1 for p in plan if p.stored)
        plan = [p for p in plan if not p.stored]

        futures: dict[Any, Planned] = {}
        progress.boards({b: sum(1 for p in plan if p.board == b) for b in probes})
        with sessions() as db:
            for p in plan:
                job = db.get(Job, p.row_id)
                if p.failure:
                    _store_result(db, job, {"status": "failed", "failure": {"stage": p.failure[0], "message": p.failure[1]}})
                    db.commit()
                    _count(outcome, job, progress, p)
                    continue
                futures[actors[p.board].run_job.remote(_job_payload(p, spec), _files(p), spec.measure.job_timeout)] = p
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1)
                p = futures.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # the actor itself died: still a stored failure
                    result = {"status": "failed", "failure": {"stage": "transport", "message": one_line(exc)}}
                job = db.get(Job, p.row_id)
                _store_result(db, job, result)
                db.commit()
                _count(outcome, job, progress, p)
        status = "done"
    except EdgeFarmError:
        status = "failed"
        raise
    except BaseException:
        status = "interrupted"
        raise
    finally:
        progress.close()
        _close_boards(actors, probes)
        with sessions() as db:
            run = db.get(Run, outcome.run_id)
            run.status = status
            run.finished_at = now()
            # Counted from the rows: a resumed run's summary covers its earlier jobs too.
            statuses = [j.status for j in db.query(Job).filter_by(run_id=run.id)]
            run.summary = {"ok": statuses.count("ok"), "failed": statuses.count("failed"),
                           "skipped": outcome.skipped, "resumed": outcome.resumed}
            db.commit()
    return outcome


def _resumed_run(db: Any, run_id: int, spec: Spec) -> Run:
    run = db.get(Run, run_id)
    if run is None:
        raise EdgeFarmError(f"--resume {run_id}: there is no run {run_id} in this database")
    if run.spec_sha256 != spec.digest():
        raise EdgeFarmError(f"--resume {run_id}: run {run_id} was made from another spec ({run.spec_name}); "
                            "resume it with the spec it was started with")
    if run.status == "done":
        raise EdgeFarmError(f"--resume {run_id}: run {run_id} finished; there is nothing to resume")
    return run


def _quarantined(db: Any, boards: list[Board]) -> dict[str, str]:
    rows = {r.name: r for r in db.query(BoardRow).filter(BoardRow.name.in_([b.name for b in boards]))}
    return {name: f"quarantined since {row.quarantined_at:%Y-%m-%d %H:%M}: {row.quarantine_reason} "
                  f"(edgefarm boards --release {name})"
            for name, row in rows.items() if row.quarantined_at is not None}


def _start_boards(sessions: Any, boards: list[Board], actors: dict[str, Any], outcome: RunOutcome,
                  gold: Golden) -> dict[str, dict[str, Any]]:
    """Probe every board and run its health check; returns the probes of boards fit to measure.

    An unreachable board fails its health check too: a board that is never there is as
    useless to the nightly run as one that computes wrong numbers.
    """
    import ray

    started = {name: actor.start.remote() for name, actor in actors.items()}
    probes: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for name, future in started.items():
        try:
            probes[name] = ray.get(future)
        except Exception as exc:  # an unreachable board is recorded, the run goes on
            problems[name] = f"unreachable: {one_line(exc)}"
    by_name = {b.name: b for b in boards}
    checks = {name: actors[name].health.remote(gold.files(), engine_for(probe, by_name[name].engines))
              for name, probe in probes.items()}
    for name, future in checks.items():
        try:
            problem = ray.get(future)
        except Exception as exc:
            problem = one_line(exc)
        if problem:
            problems[name] = f"health check failed: {problem}"
            del probes[name]
    with sessions() as db:
        for name in actors:
            row = _upsert_board(db, by_name[name], probes.get(name), problems.get(name))
            if record(row, problems.get(name), by_name[name].quarantine_after):
                problems[name] += f"; quarantined after {row.health_failures} failed checks in a row"
        db.commit()
    outcome.skipped.update(problems)
    return probes


def _close_boards(actors: dict[str, Any], reachable: dict[str, Any]) -> None:
    """End every board session: connections to boards must not outlive the run."""
    import ray

    for name, actor in actors.items():
        if name in reachable:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # noqa: S110 - a lost board cannot be closed politely; the kill below ends it
                pass
        ray.kill(actor)


def _count(outcome: RunOutcome, job: Job, progress: RunProgress, p: Planned) -> None:
    if job.status == "ok":
        outcome.ok += 1
        detail = f"{job.result.p50_ms:.2f} ms p50" if job.result else ""
    else:
        outcome.failed += 1
        detail = f"failed at {job.stage}: {job.message}"
    progress.job_done(p.board, f"{p.model.spec.name} {p.label} {p.engine}", job.status == "ok", detail)


# --- planning -----------------------------------------------------------------------------

def _plan_board(board: Board, probe: dict[str, Any], builds: list[ModelBuild], spec: Spec) -> list[Planned]:
    engines_found = probe.get("engines", {})
    plan = []
    for build in builds:
        for variant in spec.variants:
            for eng in spec.engines:
                if board.engines is not None and eng.name not in board.engines:
                    continue
                # The board's own options (its accelerators) first; the spec may still override.
                base = {"model_precision": PRECISION[variant], **board.engine_options.get(eng.name, {}), **eng.options}
                if "threads" not in eng.options and (board.threads or board.cpus):
                    # Pinned to n cores, an engine that starts a thread per core would oversubscribe.
                    base["threads"] = board.threads or len(board.cpus or [])
                info = engines_found.get(eng.name, {})
                target = _target(board, eng.name, probe.get("fingerprint", {}).get("arch", ""))
                for label, options in _thread_sweep(spec, eng.options, _configs(eng.name, variant, info, base)):
                    p = Planned(board.name, build, variant, eng.name, options, label, target)
                    if variant in build.failures:
                        p.failure = ("convert", f"variant {variant} did not compile: {build.failures[variant]}")
                    elif not info.get("available"):
                        p.failure = ("load", f"engine {eng.name} is not available on board {board.name}: "
                                             f"{info.get('reason') or 'not found'}")
                    plan.append(p)
    return plan


def _convert(spec: Spec, plan: list[Planned], builds: list[ModelBuild], cache: Cache, on_step: Any) -> None:
    """Give each job for an engine with its own format the converted model, or the reason it has none."""
    wanted = [(p, ConvertRequest(p.model.spec.name, p.variant, p.engine, p.target))
              for p in plan if p.target and not p.failure]
    done = convert_all(spec, builds, {r for _, r in wanted}, cache, on_step)
    for p, request in wanted:
        artifact = done.get(request)
        if artifact is None or artifact.size == 0:
            why = artifact.meta.get("error") if artifact else "nothing to convert"
            p.failure = ("convert", f"{p.engine} conversion ({p.target}) of {p.variant} failed: {why}")
        else:
            p.artifact = artifact


def _target(board: Board, engine: str, arch: str) -> str:
    """The converter target for ``engine`` on ``board`` ("" when the engine reads ONNX)."""
    from controller.convert import converter_for

    converter = converter_for(engine)
    if converter is None:
        return ""
    return str(board.engine_options.get(engine, {}).get("target") or converter.default_target(arch))


def _thread_sweep(spec: Spec, engine_options: dict[str, Any],
                  configs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each configuration once per thread count of ``measure.threads`` ("int8/t2"), unless the
    spec fixes the engine's threads itself."""
    threads = spec.measure.threads
    if not threads or "threads" in engine_options:
        return configs
    return [(f"{label}/t{t}", {**options, "threads": t}) for label, options in configs for t in threads]


def _configs(engine: str, variant: str, info: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The configurations one (variant, engine) pair is measured in.

    OpenVINO on a CPU with bf16 support computes an fp32 model in bf16 unless told f32: that
    changes speed and accuracy, so it is its own configuration, measured and judged like any.
    """
    if engine != "openvino" or "precision" in base:
        return [(variant, base)]
    configs = [(variant, {**base, "precision": "fp32"})]
    default = info.get("default_precision")
    if variant == "fp32" and default and default != "fp32":
        configs.append((f"fp32@{default}", {**base, "precision": None}))
    return configs


def _store_plan(db: Any, run_id: int, plan: list[Planned], resuming: bool) -> list[Planned]:
    """A job row for every planned job; a resumed run reuses the rows it already has."""
    model_rows: dict[str, Model] = {}
    variant_rows: dict[tuple[str, str], Variant] = {}
    board_rows = {b.name: b for b in db.query(BoardRow).all()}
    existing: dict[tuple[str, str, str, str, str], Job] = {}
    if resuming:
        for job in db.query(Job).filter_by(run_id=run_id):
            existing[(job.board.name, job.variant.model.name, job.variant.name, job.engine, job.label)] = job
    for p in plan:
        if p.key() in existing:
            job = existing[p.key()]
            p.row_id, p.stored = job.id, job.status in ("ok", "failed")
            continue
        m = p.model
        if m.spec.name not in model_rows:
            model_rows[m.spec.name] = _get_or_add(
                db, Model, name=m.spec.name, sha256=m.prepared.sha256,
                defaults=dict(source=m.spec.path, task=m.task,
                              inputs=[{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in m.prepared.inputs]),
            )
        key = (m.spec.name, p.variant)
        if key not in variant_rows:
            art: Artifact | None = m.variants.get(p.variant)
            variant_rows[key] = _get_or_add(
                db, Variant, model_id=model_rows[m.spec.name].id, name=p.variant,
                sha256=art.sha256 if art else "",
                defaults=dict(size_bytes=art.size if art else 0, recipe=art.meta if art else {"error": m.failures.get(p.variant)}),
            )
        job = Job(run_id=run_id, board_id=board_rows[p.board].id, variant_id=variant_rows[key].id,
                  engine=p.engine, options=p.options, label=p.label,
                  artifact={"sha256": p.artifact.sha256, "size_bytes": p.artifact.size, "target": p.target,
                            "conversion": p.artifact.meta} if p.artifact else None)
        db.add(job)
        db.flush()
        p.row_id = job.id
    return plan


def _get_or_add(db: Any, cls: Any, defaults: dict[str, Any], **keys: Any) -> Any:
    row = db.query(cls).filter_by(**keys).one_or_none()
    if row is None:
        row = cls(**keys, **defaults)
        db.add(row)
        db.flush()
    return row


def _upsert_board(db: Any, board: Board, probe: dict[str, Any] | None, error: str | None) -> BoardRow:
    row = db.query(BoardRow).filter_by(name=board.name).one_or_none()
    if row is None:
        row = BoardRow(name=board.name, chip=board.chip, transport=board.transport)
        db.add(row)
    row.transport = board.transport
    row.last_error = error
    if probe:
        fp = probe.get("fingerprint", {})
        row.chip = board.chip if board.chip != "auto" else f"{fp.get('arch', '?')} {fp.get('cpu_model', '?')}"
        row.fingerprint = fp
        row.engines = probe.get("engines")
        row.last_seen = now()
    db.flush()
    return row


# --- jobs and results ---------------------------------------------------------------------

def _job_payload(p: Planned, spec: Spec) -> dict[str, Any]:
    from agent.protocol import PROTOCOL_VERSION

    m = spec.measure
    first_input = p.model.prepared.inputs[0]
    return {
        "protocol": PROTOCOL_VERSION,
        "job_id": f"job-{p.row_id}",
        "engine": {"name": p.engine, "options": p.options},
        "artifacts": {},  # filled by the board session with paths in the board's cache
        "measure": {"warmup": m.warmup, "min_iterations": m.min_iterations, "min_seconds": m.min_seconds,
                    "max_seconds": m.max_seconds, "batch_sizes": m.batch_sizes,
                    "throughput_seconds": m.throughput_seconds},
        # What a native benchmark tool is asked for, where the board measures this engine with one.
        "native": {"warmup": m.warmup, "iterations": m.min_iterations, "threads": p.options.get("threads"),
                   "precision": p.options.get("precision"),
                   "input_shape": [d if isinstance(d, int) else 1 for d in first_input.shape]},
    }


def _files(p: Planned) -> dict[str, tuple[Path, str]]:
    art = p.artifact or p.model.variants[p.variant]
    return {
        "model": (art.path, art.sha256),
        "inputs": (p.model.inputs.path, p.model.inputs.sha256),
        "dataset": (p.model.dataset.path, p.model.dataset.sha256),
    }


def _raw(result: dict[str, Any]) -> dict[str, Any]:
    """The result record for Result.raw: the latency samples have their own columns."""
    lat = result["latency"]
    raw = {k: v for k, v in result.items() if k != "latency"}
    raw["latency_source"] = lat.get("source", "agent")
    if lat.get("engine"):  # the engine's own timing, which its native tool would report
        raw["engine_latency"] = lat["engine"]
    return raw


def _store_result(db: Any, job: Job, result: dict[str, Any]) -> None:
    job.attempts = result.get("attempts", 1)
    job.finished_at = now()
    if result.get("status") != "ok":
        failure = result.get("failure") or {}
        job.status = "failed"
        job.stage = failure.get("stage", "agent")
        job.message = failure.get("message", "no message")
        job.stderr_tail = failure.get("stderr_tail")
        return
    lat = result["latency"]
    acc = result.get("accuracy") or {}
    job.status = "ok"
    db.add(Result(
        # A native tool may not say its version or precision: "unknown", never a guess.
        job_id=job.id, engine_version=result["engine"]["version"] or "unknown",
        precision=result["engine"]["precision"] or "unknown",
        load_ms=result["phases"]["load_ms"], first_inference_ms=result["phases"]["first_inference_ms"],
        p50_ms=lat["p50"], p90_ms=lat["p90"], p99_ms=lat["p99"], mean_ms=lat["mean"], std_ms=lat["std"],
        min_ms=lat["min"], max_ms=lat["max"], n=lat["n"], cv=lat["cv"], samples_ms=lat["samples_ms"],
        throughput=result.get("throughput", []), peak_rss_mb=(result.get("memory") or {}).get("peak_rss_mb"),
        accuracy_metric=acc.get("metric"), accuracy=acc.get("value"), accuracy_detail=acc or None,
        fingerprint=result.get("fingerprint", {}), raw=_raw(result),
    ))
    db.flush()


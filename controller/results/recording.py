"""Everything a run writes to the database, in one place beside the schema.

The driver alone writes, and commits after every job (the caller commits), so whatever was
measured before an interruption stays. A board's result record arrives as the agent wrote it;
the columns are filled from it here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import ResultRecord
from controller.build.compile import Artifact, ModelBuild
from controller.config.inventory import BoardSpec
from controller.config.spec import Spec
from controller.errors import UserError
from controller.results.store import Board as BoardRow
from controller.results.store import Job, Model, Result, Run, Variant, now


class PlannedJob(Protocol):
    """What recording reads of a planned job (``controller.run.planning.Planned``)."""

    board: str
    model: ModelBuild
    variant: str
    engine: str
    options: dict[str, Any]
    label: str
    target: str
    artifact: Artifact | None
    row_id: int
    stored: bool

    def key(self) -> tuple[str, str, str, str, str]: ...


def new_run(db: Session, spec: Spec, spec_base: str, kind: str, datasets: dict[str, Any] | None = None) -> Run:
    """The run's row. ``datasets``: per model, the data it was scored on (task, sha256 of the
    evaluation file, and for the user's own files the seeded calibration/evaluation split)."""
    run = Run(spec_name=spec.name, spec_sha256=spec.digest(), spec=spec.model_dump(mode="json"),
              spec_base=spec_base, kind=kind, summary={"datasets": datasets or {}}, edgefarm_version=_version())
    run.status = "running"
    db.add(run)
    db.flush()
    return run


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefarm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return None


def resumed_run(db: Session, run_id: int, spec: Spec) -> Run:
    """Run ``run_id``, to be finished with ``spec``; refused with one line when it cannot be."""
    run = db.get(Run, run_id)
    if run is None:
        raise UserError(f"--resume {run_id}: there is no run {run_id} in this database")
    if _digest_now(run) != spec.digest():
        raise UserError(f"--resume {run_id}: run {run_id} was made from another spec ({run.spec_name}); "
                        "resume it with the spec it was started with")
    if run.status == "done" and not db.scalar(select(Job.id).where(
            Job.run_id == run_id, Job.purpose == "measure", Job.status == "failed", Job.stage == "host").limit(1)):
        raise UserError(f"--resume {run_id}: run {run_id} finished; there is nothing to resume")
    run.status = "running"
    return run


def _digest_now(run: Run) -> str:
    """The digest of the run's stored spec as this EdgeFarm reads it: a release that adds a key
    with its default gives the same spec a new digest, and must not make its runs unresumable."""
    from pydantic import ValidationError

    try:
        return Spec.model_validate(run.spec).digest()
    except ValidationError:  # a key this release no longer knows: only the digest it was stored with
        return run.spec_sha256


def finish_run(db: Session, run_id: int, status: str, skipped: dict[str, str], resumed: int) -> None:
    run = db.get(Run, run_id)
    assert run is not None
    run.status = status
    run.finished_at = now()
    # Counted from the rows: a resumed run's summary covers its earlier jobs too. Repeats (a
    # confirmation, a finalist's round) are counted apart: they measure the same jobs again.
    jobs = db.query(Job).filter_by(run_id=run.id).all()
    statuses = [j.status for j in jobs if j.purpose == "measure"]
    run.summary = {**(run.summary or {}), "ok": statuses.count("ok"), "failed": statuses.count("failed"),
                   "repeats": sum(j.purpose != "measure" for j in jobs),
                   "skipped": skipped, "resumed": resumed}


def quarantined(db: Session, boards: list[BoardSpec]) -> dict[str, str]:
    """Why each quarantined board among ``boards`` is skipped."""
    rows = {r.name: r for r in db.query(BoardRow).filter(BoardRow.name.in_([b.name for b in boards]))}
    return {name: f"quarantined since {row.quarantined_at:%Y-%m-%d %H:%M}: {row.quarantine_reason} "
                  f"(edgefarm boards --release {name})"
            for name, row in rows.items() if row.quarantined_at is not None}


def board_seen(db: Session, board: BoardSpec, probe: dict[str, Any] | None, error: str | None) -> BoardRow:
    """The board's row, created or brought up to date with what its probe found."""
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


def add_jobs(db: Session, run_id: int, plan: Sequence[PlannedJob], resuming: bool) -> None:
    """A job row for every planned job (its id in ``row_id``); a resumed run reuses the rows it has."""
    model_rows: dict[str, Model] = {}
    variant_rows: dict[tuple[str, str], Variant] = {}
    board_rows = {b.name: b for b in db.query(BoardRow).all()}
    existing: dict[tuple[str, str, str, str, str], Job] = {}
    if resuming:
        for job in db.query(Job).filter_by(run_id=run_id, purpose="measure"):
            existing[(job.board.name, job.variant.model.name, job.variant.name, job.engine, job.label)] = job
    for p in plan:
        board = board_rows[p.board]
        if p.key() in existing:
            job = existing[p.key()]
            # A job failed because its board's host was lost is run again: the board never measured it.
            p.row_id, p.stored = job.id, job.status == "ok" or (job.status == "failed" and job.stage != "host")
            if not p.stored:  # it runs now, on the board as it is now
                job.chip, job.fingerprint = board.chip, board.fingerprint
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
        job = Job(run_id=run_id, board_id=board.id, chip=board.chip, fingerprint=board.fingerprint,
                  variant_id=variant_rows[key].id, engine=p.engine, options=p.options, label=p.label,
                  artifact=_artifact(p.artifact, p.target))
        db.add(job)
        db.flush()
        p.row_id = job.id


def job_artifact(db: Session, job_id: int, artifact: Artifact, target: str) -> None:
    """What a conversion made for a job, once it is made (a run's jobs are written before their
    conversions land, so that jobs that need none start at once)."""
    job = db.get(Job, job_id)
    assert job is not None, f"no job {job_id}"
    job.artifact = _artifact(artifact, target)


def _artifact(artifact: Artifact | None, target: str) -> dict[str, Any] | None:
    if artifact is None:
        return None
    return {"sha256": artifact.sha256, "size_bytes": artifact.size, "target": target, "conversion": artifact.meta}


def add_repeats(db: Session, run_id: int, repeats: Sequence[tuple[int, str]]) -> list[int]:
    """A job row for each (job id, purpose) repeat, a copy of the job it repeats; their ids."""
    ids = []
    for job_id, purpose in repeats:
        of = db.get(Job, job_id)
        assert of is not None and of.run_id == run_id, f"job {job_id} is not a job of run {run_id}"
        job = Job(run_id=run_id, board_id=of.board_id, chip=of.chip, fingerprint=of.fingerprint,
                  variant_id=of.variant_id, engine=of.engine, options=of.options, label=of.label,
                  artifact=of.artifact, purpose=purpose, repeat_of=of.id)
        db.add(job)
        db.flush()
        ids.append(job.id)
    return ids


def _get_or_add(db: Session, cls: Any, defaults: dict[str, Any], **keys: Any) -> Any:
    row = db.query(cls).filter_by(**keys).one_or_none()
    if row is None:
        row = cls(**keys, **defaults)
        db.add(row)
        db.flush()
    return row


def job_result(db: Session, job: Job, result: ResultRecord) -> None:
    """Store a board's result record for ``job``: a failure is data, stored like a measurement."""
    job.attempts = result.get("attempts", 1)
    if "started_at" in result:  # when it started on its board (a job that never reached one has none)
        job.started_at = datetime.fromtimestamp(result["started_at"], timezone.utc).replace(tzinfo=None)
    # When the board was done with it, not when the driver got round to storing it (queued behind
    # other boards' results, it would overlap the board's next job); now() for one that never reached a board.
    ended = result.get("ended_at")
    job.finished_at = datetime.fromtimestamp(ended, timezone.utc).replace(tzinfo=None) if ended is not None else now()
    if result.get("status") != "ok":
        failure = result.get("failure") or {}
        job.status = "failed"
        job.stage = failure.get("stage", "agent")
        job.message = failure.get("message", "no message")
        job.stderr_tail = failure.get("stderr_tail")
        return
    lat, engine = result["latency"], result["engine"]
    # An ok record carries both blocks (agent.protocol.new_result); checking what a board sends
    # in full, with a stored failure for a bad record, is the result validation's job.
    assert lat is not None and engine is not None, "an ok result without latency or engine"
    acc = result.get("accuracy") or {}
    job.status = "ok"
    job.stage = job.message = job.stderr_tail = None  # a resumed job's earlier failure is over
    db.add(Result(
        # A native tool may not say its version or precision: "unknown", never a guess.
        job_id=job.id, engine_version=engine["version"] or "unknown",
        precision=engine["precision"] or "unknown",
        load_ms=result["phases"]["load_ms"], first_inference_ms=result["phases"]["first_inference_ms"],
        p50_ms=lat["p50"], p90_ms=lat["p90"], p99_ms=lat["p99"], mean_ms=lat["mean"], std_ms=lat["std"],
        min_ms=lat["min"], max_ms=lat["max"], n=lat["n"], cv=lat["cv"], samples_ms=lat["samples_ms"],
        throughput=result.get("throughput", []), peak_rss_mb=(result.get("memory") or {}).get("peak_rss_mb"),
        accuracy_metric=acc.get("metric"), accuracy=acc.get("value"), accuracy_detail=acc or None,
        fingerprint=result.get("fingerprint", {}), raw=_raw(result, lat),
    ))
    db.flush()


def _raw(result: ResultRecord, lat: dict[str, Any]) -> dict[str, Any]:
    """The result record for Result.raw: the latency samples have their own columns."""
    raw = {k: v for k, v in result.items() if k != "latency"}
    raw["latency_source"] = lat.get("source", "agent")
    if lat.get("engine"):  # the engine's own timing, which its native tool would report
        raw["engine_latency"] = lat["engine"]
    # How the sampling ended (target, precision, max_seconds, slower) and how well the median is known.
    raw["sampling"] = {k: lat[k] for k in ("stopped_by", "elapsed_s", "median_ci95", "precision") if k in lat}
    return raw

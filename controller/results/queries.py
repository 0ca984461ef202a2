"""Read-only queries for the dashboard, beyond what ``controller.results.selection`` answers.

Every function takes a ``Session`` and returns plain dataclasses, never ORM objects, so the UI
cannot lazy-load or write through them. Columns are selected explicitly: a result row carries
its raw samples and the agent's whole record, which only ``latency_samples`` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.results.store import Board, Deployment, Job, Model, ReleaseReading, Result, Run, Variant


@dataclass(frozen=True)
class RunRow:
    id: int
    spec: str
    kind: str  # run | nightly
    status: str  # running | done | failed | interrupted
    verdict: str | None  # nightly only: pass | regression
    started: datetime
    finished: datetime | None
    jobs_ok: int
    jobs_failed: int
    jobs_total: int  # includes pending ones
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class JobRow:
    job_id: int
    run_id: int
    model: str
    board: str
    chip: str  # as the job recorded it when it ran
    engine: str
    label: str  # the configuration's name in selection, e.g. fp32 or fp32@bf16
    variant: str  # the artifact variant
    status: str
    precision: str | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    n: int | None
    cv: float | None
    peak_rss_mb: float | None
    accuracy_metric: str | None
    accuracy: float | None
    stage: str | None
    message: str | None
    stderr_tail: str | None
    purpose: str = "measure"  # or confirm / round: a repeat of job ``repeat_of``
    repeat_of: int | None = None


@dataclass(frozen=True)
class BoardRow:
    name: str
    chip: str  # as the board is declared now
    transport: str
    fingerprint: dict[str, Any]
    engines: dict[str, Any]
    last_seen: datetime | None
    last_error: str | None
    quarantine: str | None = None  # since when and why, while the board is quarantined


def runs(session: Session, limit: int | None = None) -> list[RunRow]:
    """Runs newest first, with their job counts by status."""
    counts: dict[int, dict[str, int]] = {}
    # Counted in a second query, not with GROUP BY over runs: PostgreSQL cannot group JSON columns.
    for run_id, status, count in session.execute(
        select(Job.run_id, Job.status, func.count()).where(Job.purpose == "measure").group_by(Job.run_id, Job.status)
    ):
        counts.setdefault(run_id, {})[status] = count
    query = select(
        Run.id, Run.spec_name, Run.kind, Run.status, Run.verdict, Run.started_at, Run.finished_at, Run.summary
    ).order_by(Run.id.desc())
    if limit is not None:
        query = query.limit(limit)
    out = []
    for r in session.execute(query):
        by_status = counts.get(r.id, {})
        out.append(RunRow(
            id=r.id, spec=r.spec_name, kind=r.kind, status=r.status, verdict=r.verdict,
            started=r.started_at, finished=r.finished_at, jobs_ok=by_status.get("ok", 0),
            jobs_failed=by_status.get("failed", 0), jobs_total=sum(by_status.values()), summary=r.summary,
        ))
    return out


def run_jobs(session: Session, run_id: int) -> list[JobRow]:
    """Every job of a run with its result figures (None where the job failed before measuring)."""
    rows = session.execute(
        select(
            Job.id, Job.run_id, Model.name.label("model"), Board.name.label("board"), Job.chip,
            Job.engine, Job.label, Variant.name.label("variant"), Job.status, Job.stage, Job.message,
            Job.stderr_tail, Result.precision, Result.p50_ms, Result.p90_ms, Result.p99_ms, Result.n,
            Result.cv, Result.peak_rss_mb, Result.accuracy_metric, Result.accuracy, Job.purpose, Job.repeat_of,
        )
        .join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id)
        .outerjoin(Result, Result.job_id == Job.id)
        .where(Job.run_id == run_id)
        .order_by(Job.id)
    )
    return [
        JobRow(
            job_id=r.id, run_id=r.run_id, model=r.model, board=r.board, chip=r.chip, engine=r.engine,
            label=r.label, variant=r.variant, status=r.status, precision=r.precision, p50_ms=r.p50_ms,
            p90_ms=r.p90_ms, p99_ms=r.p99_ms, n=r.n, cv=r.cv, peak_rss_mb=r.peak_rss_mb,
            accuracy_metric=r.accuracy_metric, accuracy=r.accuracy, stage=r.stage, message=r.message,
            stderr_tail=r.stderr_tail, purpose=r.purpose, repeat_of=r.repeat_of,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class TimelineRow:
    """When one job of a run had its board: from ``started`` (it was the board's) to ``ended`` (the
    board was done with it), both naive UTC; None for a job that never reached a board, or is pending."""

    job_id: int
    board: str
    model: str
    engine: str
    label: str  # the configuration's name, e.g. fp32 or fp32@bf16
    variant: str  # the artifact variant
    purpose: str  # measure, or a repeat of job ``repeat_of``: round / confirm
    repeat_of: int | None
    status: str
    stage: str | None  # where a failed job failed
    started: datetime | None
    ended: datetime | None


def run_timeline(session: Session, run_id: int) -> list[TimelineRow]:
    """Every job of a run, repeats included, in the order the boards took them (then by id; the ones
    that never started last): what a Gantt chart of the run's boards draws."""
    rows = session.execute(
        select(Job.id, Board.name.label("board"), Model.name.label("model"), Job.engine, Job.label,
               Variant.name.label("variant"), Job.purpose, Job.repeat_of, Job.status, Job.stage,
               Job.started_at, Job.finished_at)
        .join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id)
        .where(Job.run_id == run_id)
        # The never-started last on every database: SQLite sorts NULLs first, PostgreSQL last.
        .order_by(Job.started_at.is_(None), Job.started_at, Job.id)
    )
    return [
        TimelineRow(job_id=r.id, board=r.board, model=r.model, engine=r.engine, label=r.label, variant=r.variant,
                    purpose=r.purpose, repeat_of=r.repeat_of, status=r.status, stage=r.stage,
                    started=r.started_at, ended=r.finished_at if r.started_at is not None else None)
        for r in rows
    ]


def latency_samples(session: Session, job_id: int) -> list[float]:
    """The raw warm latency samples (ms, in measurement order) of a job's result; [] if none."""
    samples = session.execute(select(Result.samples_ms).where(Result.job_id == job_id)).scalar_one_or_none()
    return [float(s) for s in samples or []]


def boards(session: Session) -> list[BoardRow]:
    """The boards ever seen, by name."""
    rows = session.execute(
        select(Board.name, Board.chip, Board.transport, Board.fingerprint, Board.engines, Board.last_seen,
               Board.last_error, Board.quarantined_at, Board.quarantine_reason).order_by(Board.name)
    )
    return [
        BoardRow(name=r.name, chip=r.chip, transport=r.transport, fingerprint=r.fingerprint or {},
                 engines=r.engines or {}, last_seen=r.last_seen, last_error=r.last_error,
                 quarantine=f"since {r.quarantined_at:%Y-%m-%d %H:%M}: {r.quarantine_reason}"
                 if r.quarantined_at else None)
        for r in rows
    ]


@dataclass(frozen=True)
class DeploymentRow:
    """One deploy or rollback of a bundle on a board (``controller.deploy``)."""

    id: int
    board: str
    bundle_id: str
    previous_bundle_id: str | None
    chip: str
    models: list[dict[str, Any]]
    action: str  # deploy | rollback
    status: str  # ok | failed | rolled-back
    reason: str | None
    smoke: dict[str, Any] | None
    canary: bool
    serve_port: int | None
    started_at: datetime
    finished_at: datetime | None


def deployments(session: Session, board: str | None = None) -> list[DeploymentRow]:
    """Every deploy and rollback (of one board, if named), oldest first; the manifests stay in the database."""
    query = select(Deployment.id, Deployment.board, Deployment.bundle_id, Deployment.previous_bundle_id,
                   Deployment.chip, Deployment.models, Deployment.action, Deployment.status, Deployment.reason,
                   Deployment.smoke, Deployment.canary, Deployment.serve_port, Deployment.started_at,
                   Deployment.finished_at).order_by(Deployment.id)
    rows = session.execute(query if board is None else query.where(Deployment.board == board))
    return [DeploymentRow(id=r.id, board=r.board, bundle_id=r.bundle_id, previous_bundle_id=r.previous_bundle_id,
                          chip=r.chip, models=list(r.models or []), action=r.action, status=r.status, reason=r.reason,
                          smoke=r.smoke, canary=bool(r.canary), serve_port=r.serve_port, started_at=r.started_at,
                          finished_at=r.finished_at)
            for r in rows]


def board_state(rows: Sequence[DeploymentRow]) -> dict[str, Any]:
    """What the database says a board runs, from its deployments rows (oldest first): the current bundle
    is its newest deploy or rollback that passed; a deploy that failed or was rolled back changed nothing."""
    newest = rows[-1]
    good = [r for r in rows if r.status == "ok"]
    current = good[-1] if good else None
    # A rollback row that worked reads as the board's state: it was rolled back.
    status = "rolled-back" if newest.action == "rollback" and newest.status == "ok" else newest.status
    # The current bundle's own smoke figures: from its newest successful deploy (a rollback runs none).
    deploys = [r for r in good if r.action == "deploy" and r.smoke and current and r.bundle_id == current.bundle_id]
    return {
        "board": newest.board,
        "bundle": current.bundle_id if current else None,
        "previous": current.previous_bundle_id if current else None,
        "status": status,
        "action": newest.action,
        "reason": newest.reason,
        "deployed_at": current.finished_at.isoformat(timespec="seconds") if current and current.finished_at else None,
        "last_change_at": (newest.finished_at or newest.started_at).isoformat(timespec="seconds"),
        "chip": current.chip if current else newest.chip,
        "models": [f"{m.get('name')} {m.get('engine')}/{m.get('label') or m.get('variant')}"
                   for m in (current.models if current else [])],
        "smoke": deploys[-1].smoke if deploys else None,
        "serve_port": current.serve_port if current else None,
        "history": [{"bundle": r.bundle_id, "action": r.action, "status": r.status,
                     "at": (r.finished_at or r.started_at).isoformat(timespec="seconds")} for r in rows[-10:]],
    }


def deployment_states(rows: Sequence[DeploymentRow]) -> list[dict[str, Any]]:
    """``board_state`` of every board among ``rows``, by board name."""
    by_board: dict[str, list[DeploymentRow]] = {}
    for row in rows:
        by_board.setdefault(row.board, []).append(row)
    return [board_state(board_rows) for _, board_rows in sorted(by_board.items())]



@dataclass(frozen=True)
class Reading:
    """What a board said its current release was (``release``), or why it could not be read (``error``)."""

    board: str
    release: str | None
    error: str | None
    read_at: datetime | None = None


def latest_readings(session: Session) -> dict[str, Reading]:
    """Each board's newest reading of its current release (``edgefarm deploy`` and ``deployments`` record them)."""
    newest = select(func.max(ReleaseReading.id).label("id")).group_by(ReleaseReading.board).subquery()
    rows = session.execute(
        select(ReleaseReading.board, ReleaseReading.release, ReleaseReading.error, ReleaseReading.read_at)
        .join(newest, ReleaseReading.id == newest.c.id)
    )
    return {r.board: Reading(r.board, r.release, r.error, r.read_at) for r in rows}


def drift(state: dict[str, Any], reading: Reading | None) -> dict[str, Any]:
    """``actual``, ``drift`` and ``why`` of a board's state against what the board said: drift is None
    (and ``why`` says why) when the board was not read."""
    if reading is None or reading.error is not None:
        return {"actual": None, "drift": None, "why": reading.error if reading else "never read from the board"}
    if reading.release != state["bundle"]:
        return {"actual": reading.release, "drift": True,
                "why": f"the board's current release is {reading.release or 'none'}, the database says "
                       f"{state['bundle'] or 'none'} (switched outside edgefarm deploy?)"}
    return {"actual": reading.release, "drift": False, "why": None}

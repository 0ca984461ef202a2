"""The results database's schema (SQLAlchemy 2.x ORM); opening and upgrading it is ``database``.

    runs ──< jobs >── boards          one row per job, failed or not: a failure is data
              │  ├─── variants >── models
              │  └─── jobs         repeat_of: a confirmation or a finalist's round repeats a job
              └── results          measurements, raw latency samples, accuracy, fingerprint
    deployments                    one row per deploy or rollback of a bundle on a board

A job keeps the chip and fingerprint its board had when it ran, and history is grouped by those;
``boards.chip`` is only what the board is declared as now.

Only figures and descriptions are stored: never a password, key or token from an inventory.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    spec_name: Mapped[str] = mapped_column(String(64), index=True)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict] = mapped_column(JSON)
    spec_base: Mapped[str | None] = mapped_column(Text)  # the folder relative model paths are read from
    kind: Mapped[str] = mapped_column(String(16), default="run")  # run | nightly
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed | interrupted
    verdict: Mapped[str | None] = mapped_column(String(16))  # nightly: pass | regression
    summary: Mapped[dict | None] = mapped_column(JSON)
    edgefarm_version: Mapped[str | None] = mapped_column(String(32))  # the release that ran it
    started_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    jobs: Mapped[list["Job"]] = relationship(back_populates="run")


class Board(Base):
    __tablename__ = "boards"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    chip: Mapped[str] = mapped_column(String(128))  # as declared now; each job keeps its own
    transport: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[dict | None] = mapped_column(JSON)
    engines: Mapped[dict | None] = mapped_column(JSON)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Health checks (a golden job before each run) failed in a row; at the board's
    # quarantine_after it is quarantined: skipped by runs until `edgefarm boards --release`.
    health_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    quarantined_at: Mapped[datetime | None] = mapped_column(DateTime)
    quarantine_reason: Mapped[str | None] = mapped_column(Text)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    inputs: Mapped[list] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(16))


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("model_id", "name", "sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    recipe: Mapped[dict] = mapped_column(JSON)
    model: Mapped[Model] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    engine: Mapped[str] = mapped_column(String(32))
    options: Mapped[dict] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(String(64))  # what selection calls this config, e.g. fp32@bf16
    # What the board was declared as, and what it was, when the job ran: history is grouped by
    # these, so a later run that renames a board's chip (or mistypes it) cannot re-label it.
    chip: Mapped[str] = mapped_column(String(128), index=True)
    fingerprint: Mapped[dict | None] = mapped_column(JSON)
    # The file the engine loaded when a converter made it (sha256, size_bytes, target, conversion).
    artifact: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ok | failed
    stage: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # measure: the run's own job; confirm: a suspected regression measured again the same night;
    # round: a selection finalist re-measured in interleaved rounds. Repeats name the job they repeat.
    purpose: Mapped[str] = mapped_column(String(16), default="measure", server_default="measure")
    repeat_of: Mapped[int | None] = mapped_column(Integer)  # a job id of the same run (no FK: see 0004)
    verdict: Mapped[str | None] = mapped_column(String(24))  # what nightly judged it; see results.regression
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    run: Mapped[Run] = relationship(back_populates="jobs")
    board: Mapped[Board] = relationship()
    variant: Mapped[Variant] = relationship()
    result: Mapped["Result | None"] = relationship(back_populates="job", uselist=False)


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    engine_version: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    load_ms: Mapped[float | None] = mapped_column(Float)
    first_inference_ms: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float | None] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    cv: Mapped[float | None] = mapped_column(Float)
    samples_ms: Mapped[list] = mapped_column(JSON)
    throughput: Mapped[list] = mapped_column(JSON)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)
    accuracy_metric: Mapped[str | None] = mapped_column(String(32))
    accuracy: Mapped[float | None] = mapped_column(Float)
    accuracy_detail: Mapped[dict | None] = mapped_column(JSON)
    fingerprint: Mapped[dict] = mapped_column(JSON)
    raw: Mapped[dict] = mapped_column(JSON)  # the agent's whole result record, for later questions
    job: Mapped[Job] = relationship(back_populates="result")


class Deployment(Base):
    """One deploy or rollback of a bundle on one board, written as it goes: a deploy that
    crashes half way leaves its row (status failed, or still without finished_at)."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(primary_key=True)
    board: Mapped[str] = mapped_column(String(64), index=True)
    bundle_id: Mapped[str] = mapped_column(String(16))
    previous_bundle_id: Mapped[str | None] = mapped_column(String(16))
    chip: Mapped[str] = mapped_column(String(128))
    models: Mapped[list] = mapped_column(JSON)  # [{name, engine, variant, label}]
    manifest: Mapped[dict] = mapped_column(JSON)
    action: Mapped[str] = mapped_column(String(16))  # deploy | rollback
    status: Mapped[str] = mapped_column(String(16))  # ok | failed | rolled-back
    reason: Mapped[str | None] = mapped_column(Text)
    smoke: Mapped[dict | None] = mapped_column(JSON)  # the smoke test's figures
    canary: Mapped[bool] = mapped_column(Boolean, default=False)
    serve_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class ReleaseReading(Base):
    """What a board said its current release was, each time it was asked (``edgefarm deploy``,
    ``edgefarm deployments``): the dashboard shows drift from these, since it reads no board itself."""

    __tablename__ = "release_readings"
    id: Mapped[int] = mapped_column(primary_key=True)
    board: Mapped[str] = mapped_column(String(64), index=True)
    release: Mapped[str | None] = mapped_column(String(16))  # None: no current release, or not read (error)
    error: Mapped[str | None] = mapped_column(Text)  # why the board could not be read
    read_at: Mapped[datetime] = mapped_column(DateTime, default=now)

"""The results database (SQLAlchemy 2.x ORM): SQLite file by default, any SQLAlchemy URL works.

    runs ──< jobs >── boards          one row per job, failed or not: a failure is data
              │  └─── variants >── models
              └── results          measurements, raw latency samples, accuracy, fingerprint

Only figures and descriptions are stored: never a password, key or token from an inventory.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from controller.errors import UserError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

DEFAULT_DB = "sqlite:///edgefarm.db"


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
    started_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    jobs: Mapped[list["Job"]] = relationship(back_populates="run")


class Board(Base):
    __tablename__ = "boards"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    chip: Mapped[str] = mapped_column(String(128))
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
    # The file the engine loaded when a converter made it (sha256, size_bytes, target, conversion).
    artifact: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ok | failed
    stage: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
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


def database_url(url: str | None) -> str:
    return url or os.environ.get("EDGEFARM_DB") or DEFAULT_DB


MIGRATIONS = Path(__file__).parent / "migrations"
AUTO_UPGRADE = "EDGEFARM_DB_AUTO_UPGRADE"
# Any fixed number: PostgreSQL sessions that take this advisory lock upgrade one after the other.
_PG_LOCK = 0x65646766


def open_db(url: str | None = None) -> sessionmaker[Session]:
    """Connect and return a session factory, once the database has this EdgeFarm's schema.

    A new or empty database is made at the head revision by running the migrations from nothing
    (not ``create_all`` + stamp): one path makes every database, so a new one and an upgraded one
    cannot drift apart, and every test that opens a database runs the revisions.

    A database at an older revision, or one written before schema revisions (EdgeFarm's tables,
    no ``alembic_version`` table), is left as it is: opening it stops with one line naming
    ``edgefarm db upgrade``. This holds for ``run`` and ``nightly`` too: an upgrade rewrites
    tables, and on a team's PostgreSQL the team decides when, not whichever cron job starts first.
    Where EdgeFarm owns its database (a nightly cron on its own SQLite file), setting
    ``EDGEFARM_DB_AUTO_UPGRADE=1`` makes every command upgrade it instead, with a line on stderr.
    """
    url = database_url(url)
    engine = _engine(url)
    _ensure_schema(engine)
    return sessionmaker(engine, expire_on_commit=False)


def upgrade_db(url: str | None = None, revision: str = "head",
               script_location: Path = MIGRATIONS) -> tuple[str | None, str | None]:
    """Upgrade the database in place to ``revision``, every row kept; (revision before, after)."""
    engine = _engine(database_url(url))
    try:
        return _upgrade(engine, revision, script_location)
    finally:
        engine.dispose()


def schema_state(url: str | None = None) -> tuple[str | None, bool]:
    """(the database's schema revision or None, whether EdgeFarm's tables are there); changes nothing."""
    engine = _engine(database_url(url))
    try:
        return _state(engine)
    finally:
        engine.dispose()


def head_revision(script_location: Path = MIGRATIONS) -> str:
    head = _scripts(str(script_location)).get_current_head()
    assert head is not None, f"no revision in {script_location}"
    return head


def _engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def _state(engine: Engine) -> tuple[str | None, bool]:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
    return revision, bool(tables)


def _ensure_schema(engine: Engine, attempts: int = 5) -> None:
    """Make a new database, let one at head through, stop (or upgrade) any other.

    Safe against processes opening a new database at the same moment (a run and the dashboard):
    each upgrade takes a lock and reads the revision again under it, so the second one finds the
    database made; a lock waited on too long fails, and checking again then finds it made.
    """
    from sqlalchemy.exc import DatabaseError

    head = head_revision()
    for attempt in range(1, attempts + 1):
        try:
            revision, tables = _state(engine)
            if revision == head:
                return
            if revision is None and not tables:
                _upgrade(engine, "head", MIGRATIONS)
                return
            _known(revision, engine)
            where = _where(engine)
            if os.environ.get(AUTO_UPGRADE) == "1":
                print(f"edgefarm: upgrading the database {where} from schema revision {revision or 'none'} "
                      f"to {head} ({AUTO_UPGRADE}=1)", file=sys.stderr)
                _upgrade(engine, "head", MIGRATIONS)
                return
            raise UserError(f"the database {where} is at schema revision {revision or 'none'}, this EdgeFarm "
                            f"needs {head}; run: edgefarm db upgrade --db {where}")
        except DatabaseError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)


def _known(revision: str | None, engine: Engine, script_location: Path = MIGRATIONS) -> None:
    """A revision this EdgeFarm has no file for was written by a newer one: upgrading cannot help."""
    if revision is not None and revision not in {s.revision for s in _scripts(str(script_location)).walk_revisions()}:
        raise UserError(f"the database {_where(engine)} is at schema revision {revision}, which this EdgeFarm "
                        "does not know (a newer EdgeFarm upgraded it); use that EdgeFarm version or a later one")


def _upgrade(engine: Engine, revision: str, script_location: Path) -> tuple[str | None, str | None]:
    """Run the revisions in one transaction, the only one upgrading this database at the time.

    SQLite: batch mode drops and re-creates tables that others refer to, so foreign keys are
    off while it runs (the pragma is ignored inside a transaction, so it comes first) and checked
    once before the commit (only rows the upgrade left dangling count); ``BEGIN IMMEDIATE`` takes the write lock for the whole upgrade, so a
    failed revision leaves the file as it was. PostgreSQL's DDL is transactional; an advisory
    lock makes a second upgrader wait, then find the work done.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    sqlite = engine.dialect.name == "sqlite"
    dangling: set[tuple[Any, ...]] = set()
    with engine.connect() as conn:
        try:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                dangling = {tuple(row) for row in conn.exec_driver_sql("PRAGMA foreign_key_check")}
            elif engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            before = MigrationContext.configure(conn).get_current_revision()
            _known(before, engine, script_location)
            config = Config()
            config.set_main_option("script_location", str(script_location))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            after = MigrationContext.configure(conn).get_current_revision()
            if sqlite and (broken := {tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check")} - dangling):
                # A revision's mistake, not the user's: a traceback, and the transaction rolls back.
                raise RuntimeError(f"upgrading {_where(engine)} left rows pointing nowhere ({sorted(broken)[:3]}); "
                                   "nothing was changed")
            conn.commit()
        finally:
            conn.rollback()  # after a failure; nothing to undo after the commit
            if sqlite:  # the connection goes back to the pool, where foreign keys are on
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    return before, after


def _where(engine: Engine) -> str:
    return describe(engine.url.render_as_string(hide_password=False))


@functools.lru_cache(maxsize=None)
def _scripts(script_location: str) -> "ScriptDirectory":
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", script_location)
    return ScriptDirectory.from_config(config)


def describe(url: str | None) -> str:
    """The URL as it is safe to print: a password never reaches a log."""
    from sqlalchemy.engine import make_url

    parsed = make_url(database_url(url))
    if parsed.drivername.startswith("sqlite") and parsed.database:
        return f"sqlite:///{Path(parsed.database).resolve()}"
    return parsed.render_as_string(hide_password=True)


def _sqlite_pragmas(engine: Engine) -> None:
    # WAL lets the dashboard read while a run writes; foreign keys are off by default in SQLite.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

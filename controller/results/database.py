"""Opening the results database: its URL, its schema revision, and upgrades in place (Alembic).

SQLite file by default, any SQLAlchemy URL works. The schema itself is ``store``; its history is
the revisions in ``migrations/``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.errors import UserError
from controller.results.store import Base

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

DEFAULT_DB = "sqlite:///edgefarm.db"


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
                            f"needs {head}; run: {upgrade_command(str(engine.url))}")
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


def upgrade_command(url: str) -> str:
    """The command that upgrades the database at ``url``, as it is safe to print: with a password
    in the URL, its place is named rather than the password shown."""
    from sqlalchemy.engine import make_url

    if make_url(url).password is None:
        return f"edgefarm db upgrade --db {describe(url)}"
    return f"edgefarm db upgrade --db URL (this URL with its password: {describe(url)})"


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

"""Opening the results database: its URL, its schema revision, and upgrades in place (Alembic).

SQLite file by default, any SQLAlchemy URL works. The schema itself is ``store``; its history is
the revisions in ``migrations/``.

Making and reading. Only the commands that write results make a database: ``open_db(url)`` (``run``,
``nightly``) and ``upgrade_db`` (``db upgrade``) create a SQLite file that is not there, and the
tables in an empty database. Every command that only reads (``select``, ``variants``, ``boards``,
``db current``, the dashboard) opens with ``open_db(url, create=False)``: a SQLite file that is not
there, or a database without EdgeFarm's tables, is refused in one line and nothing is made, not even
SQLite's ``-wal``/``-shm`` files (a reader never switches the journal mode, which would write).
``check_db`` asks the same questions ahead of time without making anything, so that ``run`` refuses
a bad URL before the minutes of preparing variants, not after.

Everything wrong with a URL or what it points at (not a URL, an unknown scheme, a driver that is not
installed, a folder that does not exist, a file that is not a SQLite database, a server that does
not answer, a database or user the server does not know) is a ``UserError`` that names the URL as it
is safe to print (``describe``: never a password) and where it came from (``--db``,
``$EDGEFARM_DB`` or the default). A lock held by another process is waited out a few times first;
a refused connection is not retried.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from controller.errors import UserError
from controller.results.store import Base

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

DEFAULT_DB = "sqlite:///edgefarm.db"
ENV = "EDGEFARM_DB"


def database_url(url: str | None) -> str:
    """``--db`` as given (an empty one stays empty, and is refused), else $EDGEFARM_DB, else the default."""
    if url is not None:
        return url
    return os.environ.get(ENV) or DEFAULT_DB


MIGRATIONS = Path(__file__).parent / "migrations"
AUTO_UPGRADE = "EDGEFARM_DB_AUTO_UPGRADE"
# Any fixed number: PostgreSQL sessions that take this advisory lock upgrade one after the other.
_PG_LOCK = 0x65646766
# Seconds a PostgreSQL connection may take before it counts as a server that does not answer
# (unless the URL's connect_timeout or $PGCONNECT_TIMEOUT says otherwise).
CONNECT_TIMEOUT = 10
_SQLITE_HEADER = b"SQLite format 3\x00"
_NO_DATABASE = "`edgefarm run` makes one"

# create: make what is missing (run, nightly, db upgrade); read: refuse it, make nothing;
# check: answer whether create would succeed, making nothing.
Mode = Literal["create", "read", "check"]


def open_db(url: str | None = None, *, create: bool = True) -> sessionmaker[Session]:
    """Connect and return a session factory, once the database has this EdgeFarm's schema.

    ``create=False`` is how a command that only reads opens it: a SQLite file that is not there, or
    a database with no EdgeFarm tables, is refused (``UserError``) and nothing is made.

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
    mode: Mode = "create" if create else "read"
    label = _label(url)
    engine = _engine(database_url(url), label, mode)
    try:
        _ensure_schema(engine, label, mode)
    except BaseException:
        engine.dispose()
        raise
    return sessionmaker(engine, expire_on_commit=False)


def check_db(url: str | None = None, *, create: bool = True) -> None:
    """Refuse now what ``open_db(url, create=create)`` would refuse, making and changing nothing.

    For a command that writes only after a long preparation (``run``, ``nightly``): a mistyped
    URL, a missing folder or a server that does not answer is one line before the work starts. A
    SQLite file that is not there yet passes when its folder would take it.
    """
    label = _label(url)
    engine = _engine(database_url(url), label, "check" if create else "read")
    try:
        path = _sqlite_path(engine.url)
        if create and path is not None and not path.exists():
            return  # _engine found its folder would take the file; connecting would make it
        _ensure_schema(engine, label, "check" if create else "read")
    finally:
        engine.dispose()


def exists(url: str | None = None) -> bool:
    """False for a SQLite file that is not there (opening it would make one); True for a server's
    URL. Refuses (``UserError``) a string that is not a database URL at all."""
    parsed = _parse(database_url(url), _label(url))
    path = _sqlite_path(parsed)
    return path is None or path.exists()


def upgrade_db(url: str | None = None, revision: str = "head",
               script_location: Path = MIGRATIONS) -> tuple[str | None, str | None]:
    """Upgrade the database in place to ``revision``, every row kept; (revision before, after).
    A SQLite file that is not there is made (its folder must exist)."""
    label = _label(url)
    engine = _engine(database_url(url), label, "create", memory=False)
    try:
        with _mapped(engine, label):
            revision_now, tables, others = _state(engine, label)
            if revision_now is None and not tables:
                _may_create(engine, label, others)
            return _upgrade(engine, revision, script_location)
    finally:
        engine.dispose()


def schema_state(url: str | None = None) -> tuple[str | None, bool]:
    """(the database's schema revision or None, whether EdgeFarm's tables are there); changes
    nothing, and refuses a SQLite file that is not there rather than make it."""
    label = _label(url)
    engine = _engine(database_url(url), label, "read")
    try:
        with _mapped(engine, label):
            revision, tables, _others = _state(engine, label)
        return revision, tables
    finally:
        engine.dispose()


def head_revision(script_location: Path = MIGRATIONS) -> str:
    head = _scripts(str(script_location)).get_current_head()
    assert head is not None, f"no revision in {script_location}"
    return head


# -- the URL and what it points at ----------------------------------------------------------------

def _label(url: str | None) -> str:
    """The URL as the user gave it, safe to print: ``--db URL``, ``$EDGEFARM_DB=URL`` or the default."""
    shown = describe(url)
    if url is not None:
        return f"--db {shown}"
    if os.environ.get(ENV):
        return f"${ENV}={shown}"
    return f"the default database {shown}"


def _parse(url: str, label: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ValueError as exc:  # make_url reads the port with int()
        raise UserError(f"{label}: the port is not a number (a URL's port is 1 to 65535)") from exc
    except ArgumentError as exc:
        hint = "write sqlite:///PATH for a file, or postgresql+psycopg://USER@HOST:PORT/DATABASE"
        if url and "://" not in url and "@" not in url and not url.startswith("sqlite:") and not url.split()[1:]:
            hint = f"for a file, write sqlite:///{url}"
        raise UserError(f"{label}: not a database URL; {hint}") from exc
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UserError(f"{label}: port {parsed.port} is not a port (1 to 65535)")
    if parsed.drivername.startswith("sqlite") and parsed.host:
        raise UserError(f"{label}: a SQLite URL has no host, so {parsed.host!r} is not a file here; "
                        f"a file is sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH (three or four slashes)")
    return parsed


def _sqlite_path(parsed: URL) -> Path | None:
    """The file a SQLite URL names; None for a server, an in-memory database or a ``file:`` URI."""
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None  # SQLite reads the URI itself (mode=ro and the like)
    return Path(str(parsed.database))


def _check_sqlite_file(given: Path, label: str, mode: Mode) -> None:
    """Refuse a SQLite path that cannot be EdgeFarm's database, before SQLite makes or reads anything."""
    path = given.absolute()
    tilde = " (a URL does not expand ~: write the whole path)" if "~" in given.parts else ""
    if not given.is_absolute() and not path.parent.is_dir() and Path("/", given).parent.is_dir():
        tilde = f" (three slashes make the path relative to {Path.cwd()}; four make it absolute: sqlite:////{given})"
    if path.is_dir():
        raise UserError(f"{label}: {path} is a folder, not a database file")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise UserError(f"{label}: cannot read {path}: {exc.strerror}") from exc
        # An empty file is an empty SQLite database; a SQLite file begins with its header.
        if head and not _SQLITE_HEADER.startswith(head):
            raise UserError(f"{label}: {path} is not a SQLite database (it begins {head[:8]!r})")
        return
    if mode == "read":
        raise UserError(f"{label}: no database at {path}; {_NO_DATABASE}{tilde}")
    folder = path.parent
    if not folder.exists():
        raise UserError(f"{label}: the folder {folder} does not exist{tilde}")
    if not folder.is_dir():
        raise UserError(f"{label}: {folder} is a file, not a folder")
    if mode == "check":  # will SQLite be able to make the file? Make one and take it away at once.
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # made by another process just now: it is there
        except OSError as exc:
            raise UserError(f"{label}: cannot make a file in {folder}: {exc.strerror}") from exc
        os.close(fd)
        path.unlink()


def _engine(url: str, label: str, mode: Mode, memory: bool = True) -> Engine:
    """An engine for ``url`` once everything that can be known without connecting is right; an
    in-memory SQLite database only where ``memory`` and ``mode`` is create (a library's use)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SAWarning

    parsed = _parse(url, label)
    sqlite = parsed.drivername.startswith("sqlite")
    path = _sqlite_path(parsed)
    if path is not None:
        _check_sqlite_file(path, label, mode)
    elif sqlite and (mode != "create" or not memory) and parsed.database in (None, "", ":memory:"):
        raise UserError(f"{label}: an in-memory SQLite database is empty each time it is opened; "
                        "give a file (sqlite:///edgefarm.db)")
    kwargs: dict[str, Any] = {}
    if (parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2")
            and "connect_timeout" not in parsed.query and "PGCONNECT_TIMEOUT" not in os.environ):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAWarning)  # e.g. query options the driver ignores
            engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise UserError(f"{label}: unknown database scheme {parsed.drivername!r}; EdgeFarm is tested with "
                        "sqlite:///PATH and postgresql+psycopg://USER@HOST:PORT/DATABASE") from exc
    except ImportError as exc:
        raise UserError(f"{label}: the driver for {parsed.drivername!r} is not installed (no Python module "
                        f"{exc.name!r}); install it, or use postgresql+psycopg:// (EdgeFarm's postgres extra)") from exc
    except SAWarning as exc:
        raise UserError(f"{label}: {_first_line(exc)}") from exc
    except (ArgumentError, TypeError) as exc:
        raise UserError(f"{label}: {_first_line(exc)}") from exc
    if sqlite:
        _sqlite_pragmas(engine)
    return engine


def _sqlite_pragmas(engine: Engine) -> None:
    # Foreign keys are off by default in SQLite. (WAL, which lets the dashboard read while a run
    # writes, is set by _upgrade, which makes or upgrades every EdgeFarm file: the file keeps it,
    # and opening never writes, so a file that is refused is left byte for byte as it was.)
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


# -- the library's errors, as the user's ----------------------------------------------------------

# SQLite's primary result codes (the low byte of an extended one).
_SQLITE_LOCK = {5: "busy", 6: "locked", 17: "schema changed"}
_SQLITE_USER = {3: "cannot be opened: permission denied", 8: "is read-only", 10: "cannot be read or written",
                11: "is a damaged SQLite database", 13: "cannot grow: the disk is full", 14: "cannot be opened",
                23: "is not authorized", 26: "is not a SQLite database"}
# PostgreSQL SQLSTATEs: a lock or a serialization conflict is worth waiting out.
_PG_LOCK_STATES = {"55P03", "40P01", "40001"}
# Classes the user's URL, rights or server explain: connection, authorization, unknown database,
# resources (disk full), operator intervention (shutting down), and missing privileges.
_PG_USER_CLASSES = {"08", "28", "3D", "53", "57"}
_PG_USER_STATES = {"42501"}


def _sqlite_code(exc: DBAPIError) -> int | None:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _pg_state(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _locked(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    return _sqlite_code(exc) in _SQLITE_LOCK or _pg_state(exc) in _PG_LOCK_STATES


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return re.sub(r"\s*\(Background on this \w+ at: \S+\)$", "", line)


def _user_error(exc: DBAPIError, label: str, engine: Engine, connecting: bool) -> UserError | None:
    """The user's mistake this error is, or None for one in EdgeFarm's own SQL (a traceback)."""
    detail = _first_line(exc)
    code, state = _sqlite_code(exc), _pg_state(exc)
    path = _sqlite_path(engine.url)
    if code in _SQLITE_USER:
        return UserError(f"{label}: {path.absolute() if path else 'the database'} {_SQLITE_USER[code]} ({detail})")
    if connecting or (state is not None and (state[:2] in _PG_USER_CLASSES or state in _PG_USER_STATES)):
        return UserError(f"{label}: cannot connect: {detail}" if connecting else f"{label}: {detail}")
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)) and engine.dialect.name != "sqlite":
        return UserError(f"{label}: {detail}")  # the server went away or refused what it was asked
    return None


@contextmanager
def _mapped(engine: Engine, label: str, retry_locks: bool = False) -> Iterator[None]:
    """Turn the driver's errors that the user's URL, file or server explain into a UserError; with
    ``retry_locks``, a lock goes through as it is, for the caller to wait out."""
    try:
        yield
    except DBAPIError as exc:
        if _locked(exc):
            if retry_locks:
                raise
            raise UserError(f"{label}: the database stayed locked by another process ({_first_line(exc)}); "
                            "try again when it is done") from exc
        mapped = _user_error(exc, label, engine, connecting=exc.connection_invalidated)
        if mapped is None:
            raise
        raise mapped from exc


def _connect(engine: Engine, label: str) -> Connection:
    """A connection, or one line saying why not: every failure to connect is about the URL, the
    file or the server, except a lock (waited out by the caller)."""
    try:
        return engine.connect()
    except DBAPIError as exc:
        if _locked(exc):
            raise
        mapped = _user_error(exc, label, engine, connecting=True)
        assert mapped is not None
        raise mapped from exc


# -- the schema -----------------------------------------------------------------------------------

def _state(engine: Engine, label: str) -> tuple[str | None, bool, list[str]]:
    """(schema revision or None, whether EdgeFarm's tables are there, the tables of others)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    with _connect(engine, label) as conn:
        # Tables first, revision second: the two reads are separate statements, and another process
        # may make the database between them. Its upgrade commits tables and revision together, so
        # in this order a reader sees nothing, or the whole schema, or (tables missed, revision at
        # head) a made database, but never tables without a revision (an "old" database).
        names = set(inspect(conn).get_table_names())
        revision = MigrationContext.configure(conn).get_current_revision()
    ours = names & set(Base.metadata.tables)
    return revision, bool(ours), sorted(names - ours - {"alembic_version"})


def _may_create(engine: Engine, label: str, others: list[str]) -> None:
    """EdgeFarm makes its tables in an empty database, not in another program's SQLite file (a
    mistyped path to a browser's history); a server's database may be shared, so there it may."""
    if others and engine.dialect.name == "sqlite":
        shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        path = _sqlite_path(engine.url)
        raise UserError(f"{label}: {path.absolute() if path else 'it'} is another program's SQLite database (tables: "
                        f"{shown}), not EdgeFarm's; give EdgeFarm a file of its own")


def _ensure_schema(engine: Engine, label: str, mode: Mode, attempts: int = 5) -> None:
    """Make a new database (mode create), let one at head through, stop (or upgrade) any other.

    Safe against processes opening a new database at the same moment (a run and the dashboard):
    each upgrade takes a lock and reads the revision again under it, so the second one finds the
    database made; a lock waited on too long fails, and checking again then finds it made. Only a
    lock is tried again: a file that is not a database or a server that refuses is refused at once.
    """
    head = head_revision()
    for attempt in range(1, attempts + 1):
        try:
            with _mapped(engine, label, retry_locks=attempt < attempts):
                revision, tables, others = _state(engine, label)
                if revision == head:
                    return
                if revision is None and not tables:
                    if mode == "read":
                        raise UserError(f"{label}: the database has no EdgeFarm tables yet; `edgefarm run` makes them")
                    _may_create(engine, label, others)
                    if mode == "create":
                        _upgrade(engine, "head", MIGRATIONS)
                    return
                _known(revision, engine)
                where = _where(engine)
                if os.environ.get(AUTO_UPGRADE) == "1":
                    if mode == "check":
                        return  # open_db will upgrade it
                    print(f"edgefarm: upgrading the database {where} from schema revision {revision or 'none'} "
                          f"to {head} ({AUTO_UPGRADE}=1)", file=sys.stderr)
                    _upgrade(engine, "head", MIGRATIONS)
                    return
                raise UserError(f"the database {where} is at schema revision {revision or 'none'}, this EdgeFarm "
                                f"needs {head}; run: {upgrade_command(str(engine.url))}")
        except DBAPIError as exc:  # retry_locks lets a lock through: wait, and look again
            if not _locked(exc):
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("not reached: the last attempt maps every error")


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
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # kept in the file; a no-op once set
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


# user:password@ in a string that is not a URL SQLAlchemy can read: the password is masked all the same.
_PASSWORD = re.compile(r"^([^:/@]*):[^@]*@")


def describe(url: str | None) -> str:
    """The URL as it is safe to print: a password never reaches a log, even in a malformed URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    raw = database_url(url)
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError):
        if not raw:
            return "''"
        scheme, sep, rest = raw.partition("://") if "://" in raw else ("", "", raw)
        return scheme + sep + _PASSWORD.sub(r"\1:***@", rest)
    path = _sqlite_path(parsed)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    return parsed.render_as_string(hide_password=True)

"""Every way a database URL can be wrong, for every command that takes ``--db``: one line naming the
URL as it is safe to print (never its password) and what is wrong, exit 2, no traceback, and
nothing made or changed: no new file (not even SQLite's -wal/-shm), the real database's rows as
they were, every other file byte for byte.

A case id is ``KIND-COMMAND``. The same kind is tried on commands whose code paths differ: the
reading ones (``select``, ``variants``, ``boards``, ``boards --release``, ``db current``, the
dashboard) open with ``create=False``; ``run`` and ``nightly`` check the database before any work
(``check_db``); ``db upgrade`` makes and upgrades. ``unknown-scheme`` is tried on all nine, to show
each command is wired to the same refusal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from controller.errors import UserError
from controller.results.database import check_db, describe, open_db
from tests.net import free_port
from tests.postgres import postgres_server
from tests.refusal import ROOT, Case, Snapshot, assert_refused, edgefarm, real_database

SPEC = str(ROOT / "examples" / "ppocr.yaml")
RELEASE_DB = ROOT / "tests" / "data" / "release-bf4204a.db"

# Each command that takes --db, as a user types it ({tmp} and {port} are filled in per test).
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run", SPEC),
    "nightly": ("nightly", SPEC, "--report", "{tmp}/report"),
    "boards": ("boards",),
    "release": ("boards", "--release", "local"),
    "select": ("select",),
    "variants": ("variants",),
    "dashboard": ("dashboard", "--port", "{port}"),
    "upgrade": ("db", "upgrade"),
    "current": ("db", "current"),
}
READING = ("select", "variants", "release", "dashboard", "current")


def cases(kind: str, url: str | None, needles: tuple[str, ...], commands: tuple[str, ...],
          env: dict[str, str] | None = None) -> list[Case]:
    return [Case(f"{kind}-{command}", (*COMMANDS[command], *(("--db", url) if url is not None else ())),
                 needles, env=env or {}) for command in commands]


REFUSED = "Connection refused"
SECRET = "s3cret-pw"  # in URLs below: it must never be printed
CASES: list[Case] = [
    # -- the URL itself ------------------------------------------------------------------------
    *cases("unknown-scheme", "foo://x", ("--db foo://x", "unknown database scheme 'foo'"), tuple(COMMANDS)),
    *cases("unknown-driver-name", "postgresql+nosuch://u@h/db", ("unknown database scheme 'postgresql+nosuch'",),
           ("select",)),
    *cases("not-a-url", "not a url", ("--db not a url", "not a database URL"), ("select",)),
    *cases("bare-path", "edgefarm.db", ("--db edgefarm.db", "for a file, write sqlite:///edgefarm.db"), ("run",)),
    *cases("empty-url", "", ("--db ''", "not a database URL"), ("select",)),
    *cases("malformed-url-with-password", f"admin:{SECRET}@dbhost/edgefarm",
           ("--db admin:***@dbhost/edgefarm", "not a database URL"), ("current",)),
    *cases("port-not-a-number", "postgresql+psycopg://u@127.0.0.1:abc/db", ("the port is not a number",), ("current",)),
    *cases("port-out-of-range", "postgresql+psycopg://u@127.0.0.1:99999/db", ("port 99999",), ("upgrade", "run")),
    *cases("sqlite-url-with-host", "sqlite://edgefarm.db", ("sqlite://edgefarm.db", "three or four slashes"),
           ("select", "upgrade")),
    *cases("sqlite-unknown-query-option", "sqlite:///{tmp}/new.db?foo=bar", ("'foo'", "not accepted"), ("upgrade",)),
    *cases("sqlite-in-memory", "sqlite://", ("--db sqlite://", "in-memory"), ("select", "upgrade", "run")),
    *cases("driver-not-installed", "mysql://u@localhost/db", ("'mysql'", "not installed", "'MySQLdb'"),
           ("select", "run")),
    *cases("pg8000-not-installed", "postgresql+pg8000://u@localhost/db", ("'postgresql+pg8000'", "'pg8000'"),
           ("upgrade",)),
    *cases("env-unknown-scheme", None, ("$EDGEFARM_DB=foo://x", "unknown database scheme"), ("select", "nightly"),
           env={"EDGEFARM_DB": "foo://x"}),
    *cases("env-missing-file", None, ("$EDGEFARM_DB=sqlite:///{tmp}/missing.db", "no database at"), ("variants",),
           env={"EDGEFARM_DB": "sqlite:///{tmp}/missing.db"}),
    # -- what a SQLite URL points at -----------------------------------------------------------
    *cases("missing-file", "sqlite:///{tmp}/missing.db",
           ("--db sqlite:///{tmp}/missing.db", "no database at {tmp}/missing.db", "`edgefarm run` makes one"), READING),
    *cases("missing-folder", "sqlite:///{tmp}/nodir/e.db", ("the folder {tmp}/nodir does not exist",),
           ("run", "nightly", "upgrade")),
    *cases("folder-is-a-file", "sqlite:///{tmp}/notes.db/e.db", ("{tmp}/notes.db is a file, not a folder",), ("upgrade",)),
    *cases("relative-path-meant-absolute", "sqlite:///{rel}/edgefarm.db",
           ("no database at", "four make it absolute: sqlite:///{tmp}/edgefarm.db"), ("select",)),
    *cases("tilde-in-path", "sqlite:///~/edgefarm.db", ("the folder", "does not expand ~"), ("run",)),
    *cases("a-folder", "sqlite:///{tmp}/adir", ("{tmp}/adir is a folder, not a database file",), ("select", "upgrade")),
    *cases("text-file", "sqlite:///{tmp}/notes.db", ("{tmp}/notes.db is not a SQLite database", "b'hello"),
           ("select", "run", "boards")),
    *cases("png-file", "sqlite:///{tmp}/chart.png", ("{tmp}/chart.png is not a SQLite database", "PNG"),
           ("variants", "nightly")),
    *cases("empty-file", "sqlite:///{tmp}/zero.db", ("--db sqlite:///{tmp}/zero.db", "has no EdgeFarm tables"),
           ("select", "release", "dashboard")),
    *cases("damaged-sqlite", "sqlite:///{tmp}/damaged.db", ("{tmp}/damaged.db is a damaged SQLite database",),
           ("select", "upgrade")),
    *cases("other-programs-sqlite", "sqlite:///{tmp}/places.sqlite",
           ("{tmp}/places.sqlite is another program's SQLite database", "moz_places"), ("run", "upgrade")),
    *cases("other-programs-sqlite-read", "sqlite:///{tmp}/places.sqlite", ("has no EdgeFarm tables",), ("select",)),
    *cases("old-schema", "sqlite:///{tmp}/old.db", ("is at schema revision none", "edgefarm db upgrade --db "
                                                    "sqlite:///{tmp}/old.db"), ("select", "variants", "dashboard", "run")),
    *cases("newer-schema", "sqlite:///{tmp}/newer.db", ("schema revision 9999", "does not know"),
           ("select", "upgrade", "run")),
    # -- a server that does not answer, or is not PostgreSQL ------------------------------------
    *cases("server-refuses", f"postgresql+psycopg://edge:{SECRET}@127.0.0.1:{{closed}}/edgefarm",
           ("--db postgresql+psycopg://edge:***@127.0.0.1:", "cannot connect", REFUSED),
           ("select", "run", "upgrade", "dashboard", "current", "boards")),
    *cases("server-not-postgresql", "postgresql+psycopg://edge@127.0.0.1:{impostor}/edgefarm",
           ("127.0.0.1:{impostor}", "cannot connect"), ("select",)),
    *cases("unknown-host", "postgresql+psycopg://edge@no-such-host.invalid/edgefarm",
           ("no-such-host.invalid", "cannot connect"), ("variants",)),
]
if Path("/proc/self").is_dir():  # a folder no file can be made in, whoever runs the tests (root included)
    CASES += [*cases("cannot-make-file", "sqlite:////proc/edgefarm.db", ("cannot make a file in /proc",), ("run",)),
              *cases("cannot-make-file", "sqlite:////proc/edgefarm.db", ("/proc/edgefarm.db cannot be opened",),
                     ("upgrade",))]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (SQLite's -wal/-shm included) and a hash of its bytes; a -shm
    file's bytes are SQLite's shared memory, which readers write to, so only its presence counts."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else "shm" if p.name.endswith("-shm")
            else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def impostor() -> Iterator[int]:
    """A port where something that is not PostgreSQL answers (an SSH banner, then it hangs up)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """The files the cases point at, beside a real database (``edgefarm.db``)."""
    real_database(tmp_path)
    (tmp_path / "notes.db").write_text("hello, these are notes\n")
    (tmp_path / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (tmp_path / "zero.db").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    data = RELEASE_DB.read_bytes()
    (tmp_path / "damaged.db").write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # a header, then garbage
    (tmp_path / "old.db").write_bytes(data)  # the release's file, never upgraded
    with closing(sqlite3.connect(tmp_path / "places.sqlite")) as conn:  # a browser's history, say
        conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
        conn.commit()
    newer = tmp_path / "newer.db"
    newer.write_bytes((tmp_path / "edgefarm.db").read_bytes())
    with closing(sqlite3.connect(newer)) as conn:  # closed, so that the change is in the file itself
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
        conn.commit()
    # tests.refusal's Snapshot reads the real database read-only, which leaves its -wal/-shm beside
    # it (a WAL file); read it once here, so that those files count as there from the start.
    Snapshot.of(tmp_path / "edgefarm.db")
    return tmp_path


def filled(case: Case, tmp: Path, **more: object) -> Case:
    values = {"tmp": str(tmp), "rel": str(tmp).lstrip("/"), "port": str(free_port()), "closed": str(free_port()),
              **{k: str(v) for k, v in more.items()}}
    fill = lambda s: s.format(**values) if "{" in s else s  # noqa: E731
    return dataclasses.replace(case, argv=tuple(map(fill, case.argv)), needles=tuple(map(fill, case.needles)),
                               env={k: fill(v) for k, v in case.env.items()})


def assert_refused_and_nothing_made(case: Case, tmp: Path) -> str:
    before = snapshot(tmp)
    line = assert_refused(case, tmp, tmp / "edgefarm.db")
    assert snapshot(tmp) == before, f"files were made or changed: {case.argv}"
    assert SECRET not in line
    return line


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_database_is_refused_in_one_line(case: Case, place: Path, impostor: int) -> None:
    assert_refused_and_nothing_made(filled(case, place, impostor=impostor), place)


# -- a real PostgreSQL: what only a server can say ----------------------------------------------

PG_CASES = [
    *cases("unknown-database", "{missing}", ("no_such_db", "does not exist"), ("select", "run")),
    *cases("unknown-user", "{nobody}", ("nobody", "cannot connect"), ("upgrade",)),
    *cases("server-database-without-tables", "{empty}", ("has no EdgeFarm tables",), ("select", "dashboard")),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[dict[str, str]]:
    try:
        with postgres_server() as url:
            engine = create_engine(url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql("CREATE DATABASE empty_one")
            engine.dispose()
            parsed = make_url(url)
            yield {"missing": parsed.set(database="no_such_db").render_as_string(hide_password=False),
                   "empty": parsed.set(database="empty_one").render_as_string(hide_password=False),
                   "nobody": parsed.set(username="nobody", password=SECRET).render_as_string(hide_password=False)}
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("case", PG_CASES, ids=lambda c: c.id)
def test_what_a_postgresql_server_refuses_is_one_line(case: Case, pg: dict[str, str], tmp_path: Path) -> None:
    Snapshot.of(real_database(tmp_path))
    case = filled(dataclasses.replace(case, argv=tuple(a.format(**pg) if a.strip("{}") in pg else a
                                                       for a in case.argv)), tmp_path)
    line = assert_refused_and_nothing_made(case, tmp_path)
    assert "not-a-real-secret" not in line  # the server fixture's password


# -- where the user cannot read or write (root can: these run as anyone else) --------------------

@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads and writes any file")
@pytest.mark.parametrize("kind, command, needle", [
    ("unreadable-file", "select", "cannot read"),
    ("unwritable-folder", "run", "cannot make a file in"),
])
def test_permission_denied_is_one_line(kind: str, command: str, needle: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    db = locked / "edgefarm.db"
    if kind == "unreadable-file":
        db.write_bytes(RELEASE_DB.read_bytes())
        db.chmod(0)
    else:
        db = locked / "new.db"
    locked.chmod(0o500 if kind == "unwritable-folder" else 0o700)
    try:
        case = Case(f"{kind}-{command}", (*COMMANDS[command], "--db", f"sqlite:///{db}"), (needle, "ermission denied"))
        assert_refused(filled(case, tmp_path), tmp_path)
        assert kind == "unreadable-file" or not db.exists()
    finally:
        locked.chmod(0o700)
        if db.exists():
            db.chmod(0o600)


# -- the refusals are not over-broad ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("select",), ("select", "--format", "json"), ("select", "--objective", "throughput", "--latency-ceiling", "50"),
    ("variants",),  # the release's records have an older shape ("nodes": {"before", "after"})
    ("variants", "--model", "ppocr-det", "--format", "json"), ("db", "current"), ("db", "upgrade"),
], ids=" ".join)
def test_reading_commands_work_on_the_real_database(argv: tuple[str, ...], tmp_path: Path) -> None:
    db = real_database(tmp_path)
    before = snapshot(tmp_path)
    proc = edgefarm((*argv, "--db", f"sqlite:///{db}"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and not proc.stderr
    assert snapshot(tmp_path) == before  # read, not written (db upgrade: already at head)


def test_listing_boards_works_with_the_real_database_and_without_one(tmp_path: Path, edgefarm_home: Path) -> None:
    db = real_database(tmp_path)
    for url in (f"sqlite:///{db}", f"sqlite:///{tmp_path / 'missing.db'}"):
        before = snapshot(tmp_path)
        proc = edgefarm(("boards", "--db", url), tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("local  chip=")
        assert snapshot(tmp_path) == before  # the missing one stays missing


def test_check_db_passes_a_new_file_and_makes_nothing(tmp_path: Path) -> None:
    check_db(f"sqlite:///{tmp_path / 'new.db'}")  # what run and nightly ask first
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no database at"):
        check_db(f"sqlite:///{tmp_path / 'new.db'}", create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_connection_is_not_retried(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://edge@127.0.0.1:{free_port()}/edgefarm"
    start = time.monotonic()
    with pytest.raises(UserError, match=REFUSED):
        open_db(url)
    assert time.monotonic() - start < 3


def test_describe_never_shows_a_password() -> None:
    assert describe(f"postgresql+psycopg://u:{SECRET}@db.lab/edgefarm") == "postgresql+psycopg://u:***@db.lab/edgefarm"
    assert describe(f"postgresql+psycopg://u:{SECRET}@db.lab:abc/edgefarm") == "postgresql+psycopg://u:***@db.lab:abc/edgefarm"
    assert describe(f"u:{SECRET}@db.lab/edgefarm") == "u:***@db.lab/edgefarm"
    assert describe("") == "''"

"""Schema revisions: a database the release at bf4204a wrote upgrades in place, on SQLite and on
PostgreSQL, with every row kept; commands stop with one line on a database they would have to
change; a new database is made at head; the models and the migrations agree.

``tests/data/release-bf4204a.db`` was written by that release's own code
(``tests/data/make_release_db.py`` says how).
"""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import MetaData, create_engine, inspect, select
from sqlalchemy.engine import make_url

from controller.cli import main
from controller.errors import UserError
from controller.results.database import (
    AUTO_UPGRADE,
    MIGRATIONS,
    describe,
    head_revision,
    open_db,
    schema_state,
    upgrade_db,
)
from controller.results.store import Base, Board, Job, Result
from tests.conftest import ROOT
from tests.postgres import postgres_server

RELEASE_DB = ROOT / "tests" / "data" / "release-bf4204a.db"
TABLES = ("runs", "boards", "models", "variants", "jobs", "results")


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    path = tmp_path / "release.db"
    shutil.copyfile(RELEASE_DB, path)
    return path


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def stored_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table as SQLite stores it (JSON and datetimes as their text)."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY id")] for t in TABLES}  # noqa: S608


def kept(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> None:
    """Every row is still there with every value it had (a later revision may add columns)."""
    for table, rows in before.items():
        assert [{k: row[k] for k in rows[0]} for row in after[table]] == rows, table


def typed_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row as Python values (dicts, datetimes, floats), whatever the database."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine, only=TABLES)
        with engine.connect() as conn:
            return {t: [dict(r._mapping) for r in conn.execute(select(meta.tables[t]).order_by(meta.tables[t].c.id))]
                    for t in TABLES}
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_the_release_database_holds_rows_in_every_table() -> None:
    """The test data is what the tests below rely on: no alembic_version, rows everywhere."""
    rows = stored_rows(RELEASE_DB)
    assert all(rows[t] for t in TABLES)
    assert {j["status"] for j in rows["jobs"]} == {"ok", "failed", "pending"}
    assert schema_state(_url(RELEASE_DB)) == (None, True)


def test_the_release_database_upgrades_in_place_on_sqlite(old_db: Path) -> None:
    before = stored_rows(old_db)
    assert upgrade_db(_url(old_db)) == (None, head_revision())
    kept(before, stored_rows(old_db))
    assert schema_state(_url(old_db)) == (head_revision(), True)

    with open_db(_url(old_db))() as db:  # and this EdgeFarm reads it
        result = db.get(Result, 1)
        assert result is not None and result.samples_ms == json.loads(before["results"][0]["samples_ms"])
        assert result.job.variant.model.name == "ppocr-det"
        assert [j.started_at for j in db.scalars(select(Job))] == [None] * len(before["jobs"])


def test_jobs_stored_before_revision_0002_get_their_board_chip_and_their_result_fingerprint(old_db: Path) -> None:
    before = stored_rows(old_db)
    upgrade_db(_url(old_db))
    after = stored_rows(old_db)
    boards = {b["id"]: b for b in before["boards"]}
    fingerprints = {r["job_id"]: r["fingerprint"] for r in before["results"]}
    assert after["jobs"] and all(j["chip"] == boards[j["board_id"]]["chip"] for j in after["jobs"])
    for j in after["jobs"]:  # the result's own record where there is one, else the board's last known
        assert j["fingerprint"] == fingerprints.get(j["id"], boards[j["board_id"]]["fingerprint"])
    assert {j["id"] for j in after["jobs"]} - set(fingerprints)  # both sources are exercised


def test_the_baseline_revision_is_the_schema_the_release_made(tmp_path: Path) -> None:
    def schema(path: Path) -> list[tuple[str, str, str]]:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version' "
                                "ORDER BY name").fetchall()

    upgrade_db(_url(tmp_path / "new.db"), "0001")
    assert schema(tmp_path / "new.db") == schema(RELEASE_DB)


@pytest.mark.parametrize("argv", [["select"], ["variants"], ["boards", "--release", "rk3588-a"]])
def test_a_command_on_an_old_database_stops_with_one_line_and_changes_nothing(
        old_db: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    data = old_db.read_bytes()
    where = describe(_url(old_db))
    assert main([*argv, "--db", _url(old_db)]) == 2
    assert capsys.readouterr().err == (f"edgefarm: error: the database {where} is at schema revision none, this "
                                       f"EdgeFarm needs {head_revision()}; run: edgefarm db upgrade --db {where}\n")
    assert old_db.read_bytes() == data


def test_db_upgrade_then_the_command_works(old_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, head = _url(old_db), head_revision()
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out == f"none (this EdgeFarm needs {head}: edgefarm db upgrade --db {describe(url)})\n"

    assert main(["db", "upgrade", "--db", url]) == 0
    assert capsys.readouterr().out == f"{describe(url)}: schema revision {head} (head), was none\n"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert capsys.readouterr().out == f"{describe(url)}: already at schema revision {head} (head)\n"
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out == f"{head} (head)\n"

    assert main(["select", "--db", url, "--format", "json"]) == 0
    assert {row["model"] for row in json.loads(capsys.readouterr().out)} == {"ppocr-det", "ppocr-cls"}


def test_auto_upgrade_when_the_environment_says_so(old_db: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = stored_rows(old_db)
    monkeypatch.setenv(AUTO_UPGRADE, "1")
    with open_db(_url(old_db))() as db:
        assert db.query(Job).count() == len(before["jobs"])
    assert f"from schema revision none to {head_revision()} ({AUTO_UPGRADE}=1)" in capsys.readouterr().err
    kept(before, stored_rows(old_db))


def test_a_new_database_is_made_at_head_and_matches_the_models(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path / "new.db")
    assert main(["db", "current", "--db", url]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()  # asking made no file

    with open_db(url)() as db:
        db.add(Board(name="local", chip="x86_64", transport="local"))
        db.commit()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert "started_at" in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out == f"{head_revision()} (head)\n"
    assert schema_diff(url) == []


def test_a_database_a_newer_edgefarm_upgraded_is_refused(tmp_path: Path) -> None:
    url = _url(tmp_path / "new.db")
    open_db(url)
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    for attempt in (open_db, upgrade_db):
        with pytest.raises(UserError, match="revision 9999, which this EdgeFarm does not know"):
            attempt(url)


def test_batch_mode_relaxes_not_null_on_sqlite_and_keeps_every_row(old_db: Path, tmp_path: Path) -> None:
    """The pattern for the next change that SQLite cannot ALTER: a throw-away revision on top of
    the real ones relaxes NOT NULL on a table others refer to (jobs) and on one with a unique
    constraint and a foreign key (variants)."""
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9001_relax.py").write_text(textwrap.dedent(f'''\
        import sqlalchemy as sa
        from alembic import op

        revision = "9001"
        down_revision = "{head_revision()}"

        def upgrade():
            with op.batch_alter_table("jobs") as batch:
                batch.alter_column("label", existing_type=sa.String(64), nullable=True)
            with op.batch_alter_table("variants") as batch:
                batch.alter_column("sha256", existing_type=sa.String(64), nullable=True)
        '''))
    url = _url(old_db)

    def shape() -> dict[str, Any]:
        engine = create_engine(url)
        insp = inspect(engine)
        found = {t: (sorted(map(str, insp.get_indexes(t))), sorted(map(str, insp.get_unique_constraints(t))),
                     sorted(map(str, insp.get_foreign_keys(t)))) for t in TABLES}
        engine.dispose()
        return found

    upgrade_db(url)  # the real revisions first: the throw-away one is measured on its own
    before_rows, before_shape = stored_rows(old_db), shape()
    assert upgrade_db(url, "head", scripts) == (head_revision(), "9001")
    kept(before_rows, stored_rows(old_db))
    assert shape() == before_shape  # indexes, unique constraints, foreign keys all came through the copy

    with sqlite3.connect(old_db) as conn:
        nullable = {(t, row[1]): not row[3] for t in ("jobs", "variants")
                    for row in conn.execute(f"PRAGMA table_info({t})")}  # noqa: S608
        assert nullable[("jobs", "label")] and nullable[("variants", "sha256")]
        assert not nullable[("jobs", "engine")]  # only what the revision said
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("INSERT INTO jobs (run_id, board_id, chip, variant_id, engine, options, label, status, attempts) "
                     "VALUES (1, 1, 'x86_64', 1, 'onnxruntime', '{}', NULL, 'pending', 0)")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # still enforced after the copy
            conn.execute("INSERT INTO results (job_id, engine_version, precision, mean_ms, min_ms, max_ms, n, "
                         "samples_ms, throughput, fingerprint, raw) VALUES (999, '', '', 1, 1, 1, 1, '[]', '[]', "
                         "'{}', '{}')")


@pytest.mark.parametrize("mistake, error", [
    ('raise RuntimeError("a revision that fails half way")', "half way"),
    ('op.execute("DELETE FROM jobs WHERE id = 1")  # its result now points nowhere', "rows pointing nowhere"),
])
def test_a_revision_that_fails_leaves_the_sqlite_file_as_it_was(old_db: Path, tmp_path: Path, mistake: str,
                                                                  error: str) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9001_fails.py").write_text(textwrap.dedent(f'''\
        import sqlalchemy as sa
        from alembic import op

        revision = "9001"
        down_revision = "{head_revision()}"

        def upgrade():
            with op.batch_alter_table("jobs") as batch:
                batch.alter_column("label", existing_type=sa.String(64), nullable=True)
            {mistake}
        '''))
    data = old_db.read_bytes()
    with pytest.raises(RuntimeError, match=error):
        upgrade_db(_url(old_db), "head", scripts)
    assert old_db.read_bytes() == data  # not even the baseline's version row


# PostgreSQL: one server for the module, a new database for each test.

@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


_databases = itertools.count()


@pytest.fixture
def pg_url(pg_server: str) -> str:
    name = f"migrations{next(_databases)}"
    engine = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return make_url(pg_server).set(database=name).render_as_string(hide_password=False)


def test_the_release_rows_upgrade_in_place_on_postgresql(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    upgrade_db(pg_url, "0001")  # the release's schema, made by the baseline revision
    source = typed_rows(_url(RELEASE_DB))
    engine = create_engine(pg_url)
    meta = MetaData()
    meta.reflect(engine, only=TABLES)
    with engine.begin() as conn:
        for table in meta.sorted_tables:
            conn.execute(table.insert(), source[table.name])
            # Rows came with their ids: the sequences go on from there, as if the rows had been added here.
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                 f"(SELECT max(id) FROM {table.name}))")
        conn.exec_driver_sql("DROP TABLE alembic_version")  # as the release left it: no revisions
    engine.dispose()

    assert main(["select", "--db", pg_url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema revision none" in err
    assert "run: edgefarm db upgrade --db URL (this URL with its password: postgresql+psycopg://edgefarm:***@127.0.0.1" in err
    assert "not-a-real-secret" not in err
    assert typed_rows(pg_url) == source  # stopping changed nothing

    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert "not-a-real-secret" not in capsys.readouterr().out
    after = typed_rows(pg_url)
    for name, rows in source.items():
        assert [{k: row[k] for k in rows[0]} for row in after[name]] == rows, name
    with open_db(pg_url)() as db:
        db.add(Board(name="new-board", chip="rk3588", transport="ssh"))
        db.commit()
        assert db.get(Result, 1) is not None and db.query(Board).count() == len(source["boards"]) + 1


def test_a_new_postgresql_database_is_made_at_head_and_matches_the_models(pg_url: str) -> None:
    open_db(pg_url)
    assert schema_state(pg_url) == (head_revision(), True)
    assert schema_diff(pg_url) == []

"""The results database across versions: columns a newer EdgeFarm adds appear in an old file,
and the rows already there stay."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
from pathlib import Path

import pytest

from controller.errors import UserError
from controller.results.database import open_db, upgrade_db
from controller.results.store import Board


def test_a_database_from_an_older_version_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    with open_db(url)() as db:
        db.add(Board(name="rk3399-a", chip="rk3399", transport="ssh"))
        db.commit()
    with sqlite3.connect(path) as conn:  # what the file looked like before quarantine existed
        for column in ("health_failures", "quarantined_at", "quarantine_reason"):
            conn.execute(f"ALTER TABLE boards DROP COLUMN {column}")
        conn.execute("ALTER TABLE runs DROP COLUMN spec_base")
        conn.execute("DROP INDEX ix_jobs_chip")  # and before jobs kept their chip
        conn.execute("ALTER TABLE jobs DROP COLUMN chip")
        conn.execute("ALTER TABLE jobs DROP COLUMN fingerprint")
        conn.execute("DROP TABLE deployments")  # and before deployments were kept
        conn.execute("DROP TABLE release_readings")
        for column in ("purpose", "repeat_of", "verdict"):  # and before jobs were repeated and judged
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute("ALTER TABLE runs DROP COLUMN edgefarm_version")
        conn.execute("DROP TABLE alembic_version")  # and before schema revisions

    with pytest.raises(UserError, match="edgefarm db upgrade"):
        open_db(url)
    upgrade_db(url)
    with open_db(url)() as db:
        (board,) = db.query(Board).all()
        assert (board.name, board.chip, board.health_failures, board.quarantined_at) == ("rk3399-a", "rk3399", 0, None)
    with sqlite3.connect(path) as conn:
        assert {"spec_base", "edgefarm_version"} <= {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        assert {"purpose", "repeat_of", "verdict"} <= {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}


def test_a_database_made_by_another_process_between_two_reads_is_found_made(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the test below can only hit by chance, made certain: another process makes the
    database right after opening read one thing (tables or revision) and before it reads the other.
    Opening must see a made database, not "tables without a revision" (an old one)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine.reflection import Inspector

    url = f"sqlite:///{tmp_path / 'between.db'}"
    made: list[bool] = []

    def then_made_elsewhere(read):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = read(*args, **kwargs)
            if not made:
                made.append(True)
                upgrade_db(url)  # the other process, committing tables and revision at once
            return result
        return wrapped

    monkeypatch.setattr(Inspector, "get_table_names", then_made_elsewhere(Inspector.get_table_names))
    monkeypatch.setattr(MigrationContext, "get_current_revision",
                        then_made_elsewhere(MigrationContext.get_current_revision))
    open_db(url)
    assert made == [True]
    with sqlite3.connect(tmp_path / "between.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() is not None


def _open_when_released(url: str, barrier: "multiprocessing.synchronize.Barrier",
                        errors: "multiprocessing.Queue[str | None]") -> None:
    barrier.wait()
    try:
        open_db(url)
        errors.put(None)
    except Exception as exc:  # reported to the test, which names it
        errors.put(repr(exc))


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """A run and the dashboard (or two runs) starting on a database that does not exist yet:
    each creates the tables, and none may fail because another one created them first."""
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier, errors = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_when_released, args=(url, barrier, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [errors.get(timeout=10) for _ in procs] == [None] * 6
        with sqlite3.connect(tmp_path / f"race{attempt}.db") as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "jobs", "results", "variants"} <= tables

"""The results database across versions: columns a newer EdgeFarm adds appear in an old file,
and the rows already there stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from controller.store import Board, open_db


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

    with open_db(url)() as db:
        (board,) = db.query(Board).all()
        assert (board.name, board.chip, board.health_failures, board.quarantined_at) == ("rk3399-a", "rk3399", 0, None)
    with sqlite3.connect(path) as conn:
        assert "spec_base" in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}

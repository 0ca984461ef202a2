"""The bad-input contract, asserted the way a user meets it: ``edgefarm ...`` in a fresh process.

A refusal is: a non-zero exit status (2 unless said), exactly one line on stderr that starts with
``edgefarm`` and names what is wrong (each ``needle``, case-sensitive), no Python traceback, and a
database left as it was (``Snapshot``: row counts of every table and a hash of every row).
Matrices of cases live in tests/controller/test_bad_input_*.py; each case is one ``Case``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One kind of bad input: ``argv`` after ``edgefarm``; every needle must be in the one line."""

    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    status: int = 2
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """What a SQLite results database holds: row counts by table, and a hash of all rows."""

    counts: dict[str, int]
    digest: str

    @classmethod
    def of(cls, path: Path) -> Snapshot:
        # Read-only, immutable: taking the snapshot must not change what it measures.
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            counts, h = {}, hashlib.sha256()
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
                counts[table] = len(rows)
                for row in rows:
                    h.update(repr(row).encode())
            return cls(counts, h.hexdigest())
        finally:
            conn.close()


def edgefarm(argv: tuple[str, ...] | list[str], cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``edgefarm ARGV`` as a user runs it, in ``cwd``, with the project's interpreter."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = str(ROOT)  # the checkout under test, wherever the test runs from
    return subprocess.run([sys.executable, "-m", "controller.cli", *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(case: Case, cwd: Path, db: Path | None = None) -> str:
    """Run ``case`` and assert the refusal contract; returns the stderr line."""
    before = Snapshot.of(db) if db is not None else None
    proc = edgefarm(case.argv, cwd, case.env)
    err = proc.stderr
    where = f"edgefarm {' '.join(case.argv)}\nexit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, where
    assert proc.returncode == case.status, where
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr\n{where}"
    line = lines[0]
    assert line.startswith("edgefarm"), where
    for needle in case.needles:
        assert needle in line, f"{needle!r} is not named\n{where}"
    if db is not None:
        assert Snapshot.of(db) == before, f"the database changed\n{where}"
    return line


def real_database(folder: Path) -> Path:
    """A copy of a database a real release wrote (tests/data/release-bf4204a.db: runs, jobs,
    results, failures), upgraded to this EdgeFarm's schema: what a user's file looks like."""
    import shutil

    from controller.results.database import upgrade_db

    path = folder / "edgefarm.db"
    shutil.copyfile(ROOT / "tests" / "data" / "release-bf4204a.db", path)
    upgrade_db(f"sqlite:///{path}")
    return path


def one_line_error(err: str) -> str:
    """The one ``edgefarm: error:`` line an in-process ``main()`` wrote to stderr (no traceback)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgefarm: error: ")
    return lines[0]

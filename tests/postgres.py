"""A real PostgreSQL server for the tests: Debian's binaries, a throw-away cluster on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Iterator

from tests.net import free_port


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None



@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh server; stop it and delete its files afterwards."""
    bindir = _bin_dir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found (scripts/setup.sh installs postgresql)")
    data = tempfile.mkdtemp(prefix="edgefarm-pg-")
    # PostgreSQL refuses to run as root: as root, run it as Debian's postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = lambda *argv: subprocess.run([*as_user, *argv], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(f"{bindir}/initdb", "-D", f"{data}/db", "-U", "edgefarm", "--auth=trust", "-E", "UTF8")
        run(f"{bindir}/pg_ctl", "-D", f"{data}/db", "-w", "-l", f"{data}/log",
            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "edgefarm", "edgefarm")
        yield f"postgresql+psycopg://edgefarm:not-a-real-secret@127.0.0.1:{port}/edgefarm"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", f"{data}/db", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)

"""The agent as one hash-named zipapp file, pushed to boards as it is (like labgrid's agent).

The archive is deterministic: the same agent sources give the same bytes (sorted entries,
fixed timestamps and modes), so its name ``agent-<sha256[:16]>.pyz`` identifies the code a
board ran, and a board that already holds that name needs no new copy.

A deployment bundle's ``bundle.pyz`` is the same archive of the same sources with another entry
point (``runtime_bytes``): the deployment runtime, ``agent.runtime.cli``, so a bundle runs the
very engine and task code whose figures the farm measured.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import agent
from agent.protocol import sha256_file

SHEBANG = b"#!/usr/bin/env python3\n"
# Zip's earliest representable time: no build time may leak into the bytes.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ROOT_MAIN = (
    b'"""Entry point of the EdgeFarm agent zipapp."""\n'
    b"import sys\n\n"
    b"from agent.__main__ import main\n\n"
    b"sys.exit(main())\n"
)
RUNTIME_MAIN = (
    b'"""Entry point of an EdgeFarm deployment bundle: python3 bundle.pyz predict|serve|check|smoke."""\n'
    b"import sys\n\n"
    b"from agent.runtime.cli import main\n\n"
    b"sys.exit(main())\n"
)


def agent_source_dir() -> Path:
    """The folder of the ``agent`` package whose sources go into the bundle."""
    return Path(agent.__file__).resolve().parent


def bundle_bytes(source_dir: Path | None = None) -> bytes:
    """The agent zipapp's bytes: a shebang, then agent/**/*.py and a root __main__.py."""
    return _zipapp(source_dir or agent_source_dir(), ROOT_MAIN)


def runtime_bytes(source_dir: Path | None = None) -> bytes:
    """A deployment bundle's ``bundle.pyz``: the agent's sources, entered at ``agent.runtime.cli``."""
    return _zipapp(source_dir or agent_source_dir(), RUNTIME_MAIN)


def _zipapp(source_dir: Path, root_main: bytes) -> bytes:
    files = sorted(
        p for p in source_dir.rglob("*.py")
        if "__pycache__" not in p.relative_to(source_dir).parts
    )
    entries = [("agent/" + p.relative_to(source_dir).as_posix(), p.read_bytes()) for p in files]
    entries.append(("__main__.py", root_main))
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, data in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=FIXED_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever OS builds it
            zf.writestr(info, data)
    return buf.getvalue()


def build_agent_bundle(dest_dir: Path) -> Path:
    """Write ``agent-<first 16 hex of its sha256>.pyz`` into ``dest_dir``; reuse it if present."""
    data = bundle_bytes()
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    path = dest_dir / ("agent-%s.pyz" % digest[:16])
    if path.is_file() and sha256_file(str(path)) == digest:  # a damaged copy is rewritten
        return path
    tmp = path.with_name(path.name + ".tmp-%d" % os.getpid())
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, path)  # atomic: a concurrent builder writes the same bytes anyway
    return path

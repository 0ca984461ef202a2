"""The artifact cache on a board stays within its inventory's cache_mb, least recently used first."""

from __future__ import annotations

import os
from pathlib import Path

from agent.protocol import sha256_file
from controller.boards.agent_bundle import build_agent_bundle
from controller.boards.session import BoardSession
from controller.config.inventory import BoardSpec


def test_the_board_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    board = BoardSpec(name="local", workdir=str(tmp_path / "board"), cache_mb=0.25)
    session = BoardSession(board, build_agent_bundle(tmp_path / "agent"))
    session.start()
    cache = tmp_path / "board" / "cache"
    for age, name in ((300, "old"), (200, "used"), (100, "new")):
        src = tmp_path / f"{name}.bin"
        src.write_bytes(os.urandom(100_000))
        remote = Path(session.push(src, sha256_file(str(src))))
        os.utime(remote, (remote.stat().st_atime, remote.stat().st_mtime - age))
    # "used" is read again by a job (the agent touches what it verifies): it becomes the newest.
    used = next(p for p in cache.iterdir() if p.read_bytes() == (tmp_path / "used.bin").read_bytes())
    os.utime(used)
    # Files EdgeFarm did not push (a work directory pointed at a folder in use) are never pruned,
    # however old and large.
    theirs = cache / "thesis.pdf"
    theirs.write_bytes(os.urandom(300_000))
    os.utime(theirs, (0, 0))
    session.close()  # the end of a session prunes the cache to cache_mb
    kept = {p.read_bytes() for p in cache.iterdir() if p != theirs}
    assert kept == {(tmp_path / f"{n}.bin").read_bytes() for n in ("used", "new")}  # 200 kB <= 250 kB; "old" went
    assert theirs.is_file()

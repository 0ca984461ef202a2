"""The local transport: argv (no shell), timeouts that kill the whole tree, a clean environment."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from controller.boards.transports import CommandTimeout, TransportError, open_transport
from controller.config.inventory import Board
from tests.hung import hung_command


@pytest.fixture
def local():
    return open_transport(Board(name="local"))


def test_argv_is_not_a_shell(local, tmp_path: Path) -> None:
    done = local.run(["echo", "$(touch pwned); rm -rf /"], timeout=10, cwd=str(tmp_path))
    assert done.exit_code == 0 and done.stdout.strip() == "$(touch pwned); rm -rf /"
    assert not (tmp_path / "pwned").exists()


def test_timeout_kills_the_process_and_its_children(local, tmp_path: Path) -> None:
    argv, marker = hung_command(tmp_path)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran past its 1 s timeout"):
        local.run(argv, timeout=1)
    assert time.monotonic() - started < 10
    time.sleep(4)
    assert not marker.exists()


def test_thread_settings_of_the_controller_do_not_reach_the_board(local, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what every Ray worker has
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("EDGEFARM_SOMETHING", "kept")
    done = local.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"], timeout=30)
    env = json.loads(done.stdout)
    assert "OMP_NUM_THREADS" not in env and "RAY_ADDRESS" not in env
    assert env["EDGEFARM_SOMETHING"] == "kept" and env["PATH"] == os.environ["PATH"]


def test_put_is_atomic_and_get_reports_missing_files(local, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    local.put(src, str(tmp_path / "deep" / "er" / "b.bin"))
    assert (tmp_path / "deep" / "er" / "b.bin").read_bytes() == src.read_bytes()
    assert not list((tmp_path / "deep" / "er").glob("*.part"))
    with pytest.raises(TransportError, match="is not on the board"):
        local.get(str(tmp_path / "nope"), tmp_path / "c.bin")

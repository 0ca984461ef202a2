"""The local transport: a clean environment for the agent. What every transport does (argv, exit
codes, timeouts, files) is in test_transport_contract.py."""

from __future__ import annotations

import json
import os
import sys

import pytest

from controller.boards.transports import open_transport
from controller.config.inventory import BoardSpec


@pytest.fixture
def local():
    return open_transport(BoardSpec(name="local"))


def test_thread_settings_of_the_controller_do_not_reach_the_board(local, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what every Ray worker has
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("EDGEFARM_SOMETHING", "kept")
    done = local.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"], timeout=30)
    env = json.loads(done.stdout)
    assert "OMP_NUM_THREADS" not in env and "RAY_ADDRESS" not in env
    assert env["EDGEFARM_SOMETHING"] == "kept" and env["PATH"] == os.environ["PATH"]

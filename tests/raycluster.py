"""Real Ray clusters on this machine for the board-host tests: a head started with ``ray start
--head`` as a lab's would be, and workers started with ``edgefarm worker``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.run.worker import stop_session
from tests.conftest import ROOT
from tests.net import free_port

CLI = [sys.executable, "-m", "controller.cli"]
# `ray start --head` turns token authentication on; its clients must ask for it. On one machine
# they all read the token from ~/.ray/auth_token.
ENV = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")


@contextmanager
def ray_head(node_ip: str, home: Path) -> Iterator[str]:
    """A Ray head on ``node_ip`` (its actors' EDGEFARM_HOME is ``home``), once ``edgefarm cluster``
    reaches it; yields its address, and stops it on exit."""
    port = free_port()
    address = f"{node_ip}:{port}"
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", node_ip,
         "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
        env=dict(ENV, EDGEFARM_HOME=str(home)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([*CLI, "cluster", "--ray-address", address], env=ENV, capture_output=True,
                             timeout=300).returncode != 0:  # the head takes a few seconds to open its port
            assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not start"
            time.sleep(2)
        yield address
    finally:
        stop_session(head, 60)


def start_worker(argv: list[str], home: Path, log: Path) -> subprocess.Popen[Any]:
    """``argv`` (``edgefarm worker``, maybe behind a namespace's wrapper) started as a service would
    start it, with EDGEFARM_HOME ``home``, once it says it serves its boards."""
    with log.open("w") as out:
        # Ctrl-C as a terminal sends it, whatever started pytest: a shell's background job inherits
        # SIGINT ignored, and so would the worker, which then could not be asked to leave by it.
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(ENV, EDGEFARM_HOME=str(home)), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while "edgefarm worker: serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_session(proc, 60)
            pytest.fail(f"edgefarm worker did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc

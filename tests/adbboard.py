"""ADB test boards: the test device of tests/adbd.py in its own network namespace, over a veth pair.

The real adb server reaches each one with ``adb connect 10.232.N.2:5555``, as it would reach
a phone with wireless debugging on the lab network (SSH test boards use 10.231.N.0/24). The
namespace shares this machine's files, so the board's Python is this virtual environment's.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.netns import board_net, wait_for_listener

ADBD = Path(__file__).with_name("adbd.py")
PORT = 5555


@dataclass(frozen=True)
class AdbBoard:
    name: str
    serial: str
    namespace: str
    host_veth: str


@contextmanager
def adb_board(name: str, index: int, features: tuple[str, ...] = ("shell_v2",)) -> Iterator[AdbBoard]:
    with tempfile.TemporaryDirectory(prefix=f"edgefarm-{name}-") as files, board_net(name, index, "10.232") as net:
        log = Path(files) / "adbd.log"
        with log.open("wb") as log_fh:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", net.namespace, sys.executable, str(ADBD),
                 "--host", net.board_ip, "--port", str(PORT), "--features", ",".join(features)],
                stdout=subprocess.DEVNULL, stderr=log_fh,
            )
        try:
            wait_for_listener(daemon, net.board_ip, PORT, f"the test device {name}", log)
            yield AdbBoard(name, f"{net.board_ip}:{PORT}", net.namespace, net.host_veth)
        finally:
            daemon.kill()  # board_net then ends what it started in the namespace
            daemon.wait()

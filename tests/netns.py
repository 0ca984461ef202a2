"""A network namespace per test board, joined to this machine by a veth pair.

A board in its own namespace has its own address, so the controller reaches it over a real
TCP path, as it would reach a board on the lab network; tearing the namespace down also ends
every process the board started. Shared by the SSH and ADB test boards.

Test traffic never leaves this machine. A board's address is reached through its veth's connected
route only while that link is up: when a fault test sets the link down, the kernel drops the
route, and a reconnect to the board would follow the default route out to whatever owns that
private address elsewhere. So before any namespace exists, every range the tests use is routed
to ``unreachable`` at a low priority (a high metric): the connected /24 of a live link is more
specific and wins, and a link that is down makes the kernel answer "unreachable" at once.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Every address range a test board lives in: SSH boards 10.231.N.0/24, ADB devices 10.232.N.0/24.
TEST_RANGES = ("10.231.0.0/16", "10.232.0.0/16")
GUARD_METRIC = "4000"


@dataclass(frozen=True)
class BoardNet:
    namespace: str
    host_veth: str
    host_ip: str
    board_ip: str


def namespaces_refused() -> str | None:
    """Why this machine cannot make network namespaces, or None when it can."""
    probe = f"efprobe{int(time.time() * 1000) % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"network namespaces refused here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def guard_test_ranges() -> None:
    """Route every test range to ``unreachable`` (idempotent; see the module docstring)."""
    for cidr in TEST_RANGES:
        _sh("ip", "route", "replace", "unreachable", cidr, "metric", GUARD_METRIC)


def route_verdict(address: str) -> str:
    """What the kernel would do with a packet to ``address``: ``ip route get``'s answer, or its error."""
    done = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip()


@contextmanager
def board_net(name: str, index: int, prefix: str) -> Iterator[BoardNet]:
    """Namespace ``ef-NAME`` with ``PREFIX.INDEX.2/24`` on its side of veth ``efhINDEX``/``efbINDEX``
    and ``PREFIX.INDEX.1`` on this machine's side. On exit, every process in it is killed."""
    if not any(cidr.startswith(f"{prefix}.") for cidr in TEST_RANGES):
        raise ValueError(f"{prefix}.0.0/16 is not in TEST_RANGES; add it there so a downed link cannot leak traffic")
    guard_test_ranges()
    ns, host_veth, board_veth = f"ef-{name}", f"efh{index}", f"efb{index}"
    net = BoardNet(ns, host_veth, f"{prefix}.{index}.1", f"{prefix}.{index}.2")
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", board_veth)
        _sh("ip", "link", "set", board_veth, "netns", ns)
        _sh("ip", "addr", "add", f"{net.host_ip}/24", "dev", host_veth)
        _sh("ip", "link", "set", host_veth, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net.board_ip}/24", "dev", board_veth)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", board_veth, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield net
    finally:
        # Processes a daemon forked (sessions, commands) outlive it: end them all.
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if pids:
            subprocess.run(["kill", "-KILL", *pids], capture_output=True)
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for_listener(daemon: subprocess.Popen[bytes], host: str, port: int, what: str, log: Path) -> None:
    """Return once ``host:port`` accepts connections; fail early, with the daemon's log, if it died."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start listening on {host}:{port}: {log.read_text()}") from None
            time.sleep(0.1)

"""A network namespace per test board, joined to this machine by a veth pair.

A board in its own namespace has its own address, so the controller reaches it over a real
TCP path, as it would reach a board on the lab network; tearing the namespace down also ends
every process the board started. Shared by the SSH and ADB test boards.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


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


@contextmanager
def board_net(name: str, index: int, prefix: str) -> Iterator[BoardNet]:
    """Namespace ``ef-NAME`` with ``PREFIX.INDEX.2/24`` on its side of veth ``efhINDEX``/``efbINDEX``
    and ``PREFIX.INDEX.1`` on this machine's side. On exit, every process in it is killed."""
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

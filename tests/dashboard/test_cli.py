"""`edgefarm dashboard` starts a real Streamlit server on the database it is given, listening on
127.0.0.1 unless ``--address`` says otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from controller.results.database import open_db
from tests.net import free_port
from tests.refusal import ROOT


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a socket listens on at ``port``, from the kernel's own tables."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host order (little-endian here).
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def serve(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[str], int]:
    db = tmp_path / "e.db"
    open_db(f"sqlite:///{db}")  # the dashboard reads a database; it never makes one
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "dashboard", "--port", str(port), "--db", f"sqlite:///{db}", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                assert resp.read().decode() == "ok"
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                output = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"the dashboard did not come up within 60 s:\n{output}")
            time.sleep(0.5)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


def test_dashboard_command_serves_the_app_on_loopback_only(tmp_path: Path) -> None:
    proc, port = serve(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200 and '<div id="root">' in resp.read().decode()
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        out = stop(proc)
    assert "anyone who can reach it" not in out


async def websocket(port: int, host: str, origin: str) -> int:
    """The status a proxy gets for the page's WebSocket when it sends ``host`` and the browser's ``origin``."""
    import websockets

    try:
        async with websockets.connect(f"ws://{host}/_stcore/stream", host="127.0.0.1", port=port,
                                      origin=origin, open_timeout=10):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def test_a_proxy_that_keeps_the_host_header_gets_the_websocket(tmp_path: Path) -> None:
    """What docs/results.md tells a team's proxy, checked against the installed Streamlit: keep the
    browser's Host (with its port) and the WebSocket is same-origin; rewrite it and it is refused."""
    import asyncio

    proc, port = serve(tmp_path)
    try:
        public = "edgefarm.lab.example"
        assert asyncio.run(websocket(port, public, f"https://{public}")) == 101
        assert asyncio.run(websocket(port, f"{public}:8443", f"https://{public}:8443")) == 101  # $http_host
        assert asyncio.run(websocket(port, public, f"https://{public}:8443")) == 403  # $host drops the port
        assert asyncio.run(websocket(port, f"127.0.0.1:{port}", f"https://{public}")) == 403  # Host rewritten
    finally:
        stop(proc)


def test_address_makes_it_listen_elsewhere_and_says_so(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, "--address", "0.0.0.0")
    try:
        assert listening_addresses(port) == {"0.0.0.0"}
    finally:
        out = stop(proc)
    assert "the dashboard listens on 0.0.0.0: anyone who can reach it reads every result" in out


def test_a_port_in_use_is_refused_before_streamlit_starts(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    open_db(f"sqlite:///{db}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "controller.cli", "dashboard", "--port", str(port),
                               "--db", f"sqlite:///{db}"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (f"edgefarm: error: --address 127.0.0.1 --port {port}: cannot listen there "
                           "(Address already in use)\n")

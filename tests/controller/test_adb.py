"""The ADB transport against the real adb server and adbutils, with a test device in its own
network namespace (tests/adbd.py, a test device that speaks the real ADB protocol over TCP): what
only ADB does (the server, serials, absolute paths, shell_v2). What every transport does (argv,
exit codes, timeouts, files) is in test_transport_contract.py."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from controller.boards.transports import Transport, open_transport
from controller.config.inventory import BoardSpec, Inventory
from controller.errors import BoardUnreachable, ConfigError, TransportError
from controller.validation import parse
from tests.adbboard import AdbBoard, adb_board
from tests.net import free_port
from tests.netns import namespaces_refused


def _need_adb() -> None:
    if shutil.which("adb") is None:
        pytest.skip("adb missing (scripts/setup.sh installs Debian's adb)")


def _kill_server(port: int) -> None:
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """A port of our own for the adb server (not a developer's 5037); the transport starts it."""
    _need_adb()
    port = free_port()
    yield port
    _kill_server(port)


@contextmanager
def device_in_namespace(name: str, index: int, features: tuple[str, ...] = ("shell_v2",)) -> Iterator[AdbBoard]:
    why = namespaces_refused()
    if why:
        pytest.skip(why)
    with adb_board(name, index, features) as b:
        yield b


@pytest.fixture(scope="module")
def board() -> Iterator[AdbBoard]:
    with device_in_namespace("adbtest", 51) as b:
        yield b


def transport(serial: str, port: int, **adb: object) -> Transport:
    entry = {"name": "phone", "transport": "adb", "adb": {"serial": serial, "server_port": port, **adb}}
    return open_transport(BoardSpec.model_validate(entry))


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_adb_server_is_started_when_none_answers(board: AdbBoard) -> None:
    _need_adb()
    port = free_port()
    try:
        assert not _answers(port)
        transport(board.serial, port).close()
        assert _answers(port)
        listed = subprocess.run(["adb", "-P", str(port), "devices"], capture_output=True, text=True, timeout=30)
        assert f"{board.serial}\tdevice" in listed.stdout
    finally:
        _kill_server(port)


def test_stdin_is_closed_so_a_command_that_reads_it_ends(board: AdbBoard, server_port: int) -> None:
    t = transport(board.serial, server_port)
    try:
        assert t.run(["cat"], timeout=20).exit_code == 0  # end-of-file, not a wait for input
    finally:
        t.close()


def test_paths_must_be_absolute(board: AdbBoard, server_port: int) -> None:
    t = transport(board.serial, server_port)
    try:
        assert t.default_workdir == "/data/local/tmp/edgefarm"
        assert t.resolve("/data/local/tmp/edgefarm/x") == "/data/local/tmp/edgefarm/x"
        for path in ("~/.edgefarm", "relative/dir"):
            with pytest.raises(TransportError, match="need absolute paths"):
                t.resolve(path)
    finally:
        t.close()


def test_an_unreachable_serial_says_why_quickly(server_port: int) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BoardUnreachable, match=re.escape(f"failed to connect to '{nobody}'")):
        transport(nobody, server_port, connect_timeout=5)
    assert time.monotonic() - started < 5
    with pytest.raises(BoardUnreachable, match="R58M1234567 .*: not listed by the adb server"):
        transport("R58M1234567", server_port, connect_timeout=1)


def _kill_device_once_running(namespace: str, started: Path) -> None:
    """Kill the test device and all it runs once the command has begun (``started`` exists)."""
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    subprocess.run(["kill", "-KILL", *pids], capture_output=True)


def test_a_device_lost_during_a_command_is_unreachable(server_port: int, tmp_path: Path) -> None:
    started = tmp_path / "started"
    with device_in_namespace("adblost", 52) as lost:
        t = transport(lost.serial, server_port)
        # The device dies in the middle of the command, as a phone that reboots or crashes.
        killer = threading.Thread(target=_kill_device_once_running, args=(lost.namespace, started))
        killer.start()
        try:
            with pytest.raises(BoardUnreachable, match="the connection was lost during sh"):
                t.run(["sh", "-c", 'touch "$0"; exec sleep 30', str(started)], timeout=20)
            assert time.time() - started.stat().st_mtime < 10  # noticed at once, not at the timeout
        finally:
            killer.join()
            t.close()


def test_a_device_without_shell_v2_is_refused(server_port: int) -> None:
    with device_in_namespace("adbold", 53, features=()) as old:
        with pytest.raises(TransportError, match="lacks the shell_v2 feature"):
            transport(old.serial, server_port)


def test_the_inventory_refuses_unsafe_serials_in_one_line() -> None:
    def entry(**adb: object) -> dict:
        return {"boards": [{"name": "phone", "transport": "adb", "adb": adb}]}

    with pytest.raises(ConfigError) as caught:
        parse(Inventory, entry(serial="emulator-5554;reboot"), "lab.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("lab.yaml: boards.0.adb.serial: must be a USB serial")
    with pytest.raises(ConfigError, match="boards.0.adb.serial"):
        parse(Inventory, entry(serial="$(reboot):5555"), "lab.yaml")
    with pytest.raises(ConfigError, match="transport adb needs an 'adb' section"):
        parse(Inventory, {"boards": [{"name": "phone", "transport": "adb"}]}, "lab.yaml")
    for serial in ("R58M1234567", "emulator-5554", "192.168.1.20:5555", "pixel.lab:5555"):
        settings = parse(Inventory, entry(serial=serial), "lab.yaml").boards[0].adb
        assert settings is not None and settings.serial == serial


def test_the_agent_runs_through_the_transport(board: AdbBoard, server_port: int, tmp_path: Path) -> None:
    from agent.protocol import PROTOCOL_VERSION
    from controller.boards.agent_bundle import build_agent_bundle

    bundle = build_agent_bundle(tmp_path / "bundle")
    workdir = str(tmp_path / "board")
    agent = f"{workdir}/agent/{bundle.name}"
    t = transport(board.serial, server_port)
    try:
        t.put(bundle, agent)
        done = t.run([sys.executable, agent, "probe", "--workdir", workdir], timeout=120, cwd=workdir)
        assert done.exit_code == 0, done.stderr
        probe = json.loads(done.stdout)
        assert probe["protocol"] == PROTOCOL_VERSION and probe["disk_free_mb"] > 0
    finally:
        t.close()

"""The contract every transport keeps, checked on each one: local, the fake, SSH and ADB.

SSH and ADB are the real thing: paramiko against OpenSSH, adbutils against the adb server and a
test device, each board in its own network namespace (tests/sshboard.py, tests/adbboard.py);
they skip, saying why, where this machine refuses namespaces. What only one transport does (host
keys, jump hosts, serials, Android paths) is tested in that transport's own file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from controller.boards.transports import Transport, open_transport
from controller.config.inventory import BoardSpec
from controller.errors import BoardUnreachable, CommandTimeout, FileNotOnBoard, TransportError
from tests.adbboard import AdbBoard, adb_board
from tests.hung import hung_command
from tests.net import free_port
from tests.netns import namespaces_refused
from tests.sshboard import SshBoard, netns_refusal, ssh_board

# Quotes, a command substitution, backticks, a glob and a newline: all must reach argv as written.
ODD = "it's $(touch pwned) `touch pwned2` \"q\" * \\ end\nline two"


@pytest.fixture(scope="module")
def ssh_lab() -> Iterator[SshBoard]:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    with ssh_board("contract", 47) as b:
        yield b


@pytest.fixture(scope="module")
def adb_lab() -> Iterator[tuple[AdbBoard, int]]:
    if shutil.which("adb") is None:
        pytest.skip("adb missing (scripts/setup.sh installs Debian's adb)")
    why = namespaces_refused()
    if why:
        pytest.skip(why)
    port = free_port()  # an adb server of our own, which the transport starts
    try:
        with adb_board("contractadb", 57) as b:
            yield b, port
    finally:
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture(params=["local", "fake", "ssh", "adb"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    if request.param == "local":
        board = BoardSpec(name="local")
    elif request.param == "fake":
        board = BoardSpec(name="contract-fake", transport="fake")  # unscripted: it behaves as local
    elif request.param == "ssh":
        board = BoardSpec.model_validate(request.getfixturevalue("ssh_lab").inventory_entry())
    else:
        phone, port = request.getfixturevalue("adb_lab")
        board = BoardSpec.model_validate({"name": "phone", "transport": "adb",
                                      "adb": {"serial": phone.serial, "server_port": port}})
    t = open_transport(board)
    yield t
    t.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(proc.name)
        except OSError:
            pass  # it ended while we looked
    return found


def test_argv_reaches_the_command_as_written_and_no_shell_reads_it(transport: Transport, tmp_path: Path) -> None:
    done = transport.run(["echo", ODD], timeout=20, cwd=str(tmp_path))
    assert (done.exit_code, done.stdout) == (0, ODD + "\n")
    assert not list(tmp_path.iterdir())  # nothing substituted, nothing run

    folder = tmp_path / "a folder's $(name) `x`"
    folder.mkdir()
    done = transport.run([sys.executable, "-c", "import os, sys; print(os.getcwd(), sys.argv[1:])", ODD, ""],
                         timeout=20, cwd=str(folder))
    assert done.stdout == f"{folder} {[ODD, '']}\n", done.stderr


def test_exit_code_stdout_stderr_and_cwd_come_back_apart(transport: Transport, tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd()); print('to stderr', file=sys.stderr); sys.exit(3)"
    done = transport.run([sys.executable, "-c", code], timeout=20, cwd=str(tmp_path))
    assert (done.exit_code, done.stdout, done.stderr) == (3, f"{tmp_path}\n", "to stderr\n")
    done = transport.run(["ls", str(tmp_path / "no such dir")], timeout=20)
    assert done.exit_code != 0 and "no such dir" in done.stderr and done.stdout == ""


def test_a_command_past_its_timeout_is_killed_with_its_children(transport: Transport, tmp_path: Path) -> None:
    argv, _ = hung_command(tmp_path)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"ran past its 1\.5 s timeout and was killed"):
        transport.run(argv, timeout=1.5)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(tmp_path)) == []  # the parent and its child: the whole group
    assert transport.run(["true"], timeout=20).exit_code == 0  # and the board is still usable


def test_files_go_and_come_back_whole_under_odd_names(transport: Transport, tmp_path: Path) -> None:
    src = tmp_path / "artifact.bin"
    src.write_bytes(os.urandom(300_000))
    folder = tmp_path / "board" / "new folder's"  # folders the board must create
    remote = str(folder / "a $(file) `x`.bin")
    transport.put(src, remote)
    back = tmp_path / "back.bin"
    transport.get(remote, back)
    assert _sha256(back) == _sha256(src)
    assert os.listdir(folder) == ["a $(file) `x`.bin"]  # no half-written .part left

    src.write_bytes(b"second version")
    transport.put(src, remote)  # replaces the file in place
    transport.get(remote, back)
    assert back.read_bytes() == b"second version"


def test_a_missing_file_is_file_not_on_board_and_nothing_is_made(transport: Transport, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotOnBoard, match=re.escape(missing)):
        transport.get(missing, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_a_refusal_by_the_board_is_a_transport_error_not_a_lost_board(transport: Transport, tmp_path: Path) -> None:
    src = tmp_path / "artifact.bin"
    src.write_bytes(b"x")
    (tmp_path / "a file").write_text("not a folder")
    with pytest.raises(TransportError) as refused:
        transport.put(src, str(tmp_path / "a file" / "under it.bin"))
    # Worth no retry: the board would say the same again.
    assert not isinstance(refused.value, BoardUnreachable), refused.value


def test_paths_resolve_to_absolute_ones_and_closing_twice_is_harmless(transport: Transport, tmp_path: Path) -> None:
    assert transport.resolve(str(tmp_path)) == str(tmp_path)
    assert transport.resolve(transport.default_workdir).startswith("/")
    transport.close()
    transport.close()

"""Android boards over ADB (adbutils, through the adb server): argv quoted, real exit codes.

The adb server, not a direct connection to adbd, because it is what owns the USB devices and
the ``adb connect`` links: EdgeFarm shares a device with Android Studio, scrcpy or a
developer's ``adb shell`` instead of fighting them for it. A server on this machine is started
if none answers; a HOST:PORT serial is joined like ``adb connect``.

Commands use the shell protocol (``shell,v2``, Android 7 and later), where stdout, stderr and
the exit status come back as separate packets, so a device without the ``shell_v2`` feature
is refused rather than given guessed exit codes. Commands are argv lists joined with shlex
quoting; one that outlives its timeout is killed on the device with its whole process group.
"""

from __future__ import annotations

import functools
import posixpath
import shlex
import shutil
import socket
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from controller.boards.transports import (
    Completed,
    ErrorTable,
    Transport,
    kill_line,
    mapped_errors,
    register,
    shell_line,
    split_pid,
)
from controller.errors import BoardCommandFailed, BoardUnreachable, CommandTimeout, FileNotOnBoard, TransportError

if TYPE_CHECKING:
    from controller.config.inventory import BoardSpec

# Shell protocol packets: a one-byte id, a little-endian 32-bit length, the data.
_STDOUT, _STDERR, _EXIT, _CLOSE_STDIN = 1, 2, 3, 4
_FILE_TIMEOUT = 60.0  # mkdir and mv around a push
_SERVER_START_TIMEOUT = 30.0


@functools.cache
def _errors() -> ErrorTable:
    """adbutils' errors, and the socket errors under it, as EdgeFarm's (see ``mapped_errors``)."""
    from adbutils.errors import AdbConnectionError, AdbError, AdbTimeout

    return (
        # The adb server or the device stopped answering, or a stream ended early.
        ((AdbTimeout, AdbConnectionError, ConnectionError, EOFError, socket.timeout), BoardUnreachable),
        # The server or the device said FAIL (no such device, permission denied, a full disk).
        ((AdbError, OSError), TransportError),
    )


@register("adb")
class AdbTransport(Transport):
    # The one place on a phone the shell user may write to and execute from.
    default_workdir = "/data/local/tmp/edgefarm"

    def __init__(self, board: "BoardSpec") -> None:
        import adbutils

        super().__init__(board)
        adb = board.adb
        if adb is None:
            raise TransportError(f"board {board.name}: transport adb needs an 'adb' section")
        self.settings = adb
        self.where = f"{adb.serial} (adb server {adb.server_host}:{adb.server_port})"
        _ensure_server(adb.server_host, adb.server_port)
        self.client = adbutils.AdbClient(host=adb.server_host, port=adb.server_port)
        with mapped_errors(_errors(), self.where, lost=True):
            if ":" in adb.serial:
                self._connect()
            self._wait_online()
            self.device = self.client.device(adb.serial)
            features = self.device.get_features().split(",")
        if "shell_v2" not in features:
            raise TransportError(f"{self.where}: the device lacks the shell_v2 feature (Android 7 or later), "
                                 "without which exit codes cannot be read")

    def _mapped(self, what: str) -> AbstractContextManager[None]:
        """adbutils' errors raised in the block as EdgeFarm's; any of them while the device is
        no longer online is a lost device."""
        return mapped_errors(_errors(), f"{self.where}: {what}", self._lost)

    def _lost(self) -> bool:
        from adbutils import AdbError

        try:
            return {d.serial: d.state for d in self.client.list()}.get(self.settings.serial) != "device"
        except (AdbError, OSError):
            return True  # the adb server itself is gone

    def _connect(self) -> None:
        serial, timeout = self.settings.serial, self.settings.connect_timeout
        # Idempotent, like `adb connect`: a device another session joined is "already connected".
        answer = self.client.connect(serial, timeout=timeout)
        if not answer.startswith(("connected to", "already connected to")):
            raise BoardUnreachable(f"{self.where}: {answer}")

    def _wait_online(self) -> None:
        from adbutils import AdbTimeout

        serial, timeout = self.settings.serial, self.settings.connect_timeout
        try:
            self.client.wait_for(serial, state="device", timeout=timeout)
        except AdbTimeout as exc:
            state = {d.serial: d.state for d in self.client.list()}.get(serial)
            if state is None:
                why = "not listed by the adb server (unplugged, or USB debugging off?)"
            elif state == "unauthorized":
                why = "unauthorized: accept the USB debugging prompt on the device"
            else:
                why = f"{state}, not online"
            raise BoardUnreachable(f"{self.where}: {why} after {timeout:g} s") from exc

    # -- commands --------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        code, out, err = self._shell(shell_line(argv, cwd), timeout, argv[0])
        if code is None:
            self._kill(out)
            raise CommandTimeout(argv, timeout, err.decode(errors="replace")[-2000:])
        return Completed(code, split_pid(out)[1], err.decode(errors="replace"))

    def _shell(self, command: str, timeout: float, what: str) -> tuple[int | None, bytearray, bytearray]:
        """Exit code (None past the timeout), stdout and stderr of one shell,v2 command."""
        deadline = time.monotonic() + timeout
        with self._mapped(f"cannot start {what}"):
            conn = self.device.open_transport(timeout=self.settings.connect_timeout)
        try:
            with self._mapped(f"cannot start {what}"):
                conn.send_command("shell,v2,raw:" + command)
                conn.check_okay()
                # No input will come: a command that reads stdin gets end-of-file, not a hang.
                conn.conn.sendall(bytes([_CLOSE_STDIN]) + bytes(4))
            return self._read_packets(conn.conn, deadline, what)
        finally:
            conn.close()

    def _read_packets(self, sock: socket.socket, deadline: float, what: str) -> tuple[int | None, bytearray, bytearray]:
        buf, out, err = bytearray(), bytearray(), bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, out, err
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue  # the deadline above decides
            except OSError as exc:  # a raw stream from the server: any error on it is the link lost
                raise BoardUnreachable(f"{self.where}: the connection was lost during {what}: {exc}") from exc
            if not chunk:  # the server closes the socket when the device is lost
                raise BoardUnreachable(f"{self.where}: the connection was lost during {what}")
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + (size := int.from_bytes(buf[1:5], "little")):
                kind, data = buf[0], bytes(buf[5:5 + size])
                del buf[:5 + size]
                if kind == _STDOUT:
                    out += data
                elif kind == _STDERR:
                    err += data
                elif kind == _EXIT:
                    return data[0], out, err

    def _kill(self, out: bytearray) -> None:
        pid = split_pid(out)[0]
        if pid is not None:
            try:
                self._shell(kill_line(pid), 10, "kill")
            except TransportError:
                pass  # the device is going away anyway; the timeout is what gets reported

    # -- files -----------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        # adbd's sync service takes absolute paths only, and a phone has no home to expand ~ to.
        if not path.startswith("/"):
            raise TransportError(f"board {self.board.name}: {path!r}: ADB boards need absolute paths "
                                 f"(no ~ on Android), such as {self.default_workdir}")
        return path

    def put(self, local: Path, remote: str) -> None:
        remote = self.resolve(remote)
        tmp = remote + ".part"
        self._checked(["mkdir", "-p", "--", posixpath.dirname(remote)], f"cannot create the folder of {remote}")
        with self._mapped(f"cannot write {remote}"):
            self.device.sync.push(local, tmp, mode=local.stat().st_mode & 0o777)
        # Never a half-written file under the real name.
        self._checked(["mv", "-f", "--", tmp, remote], f"cannot move {tmp} to {remote}")

    def get(self, remote: str, local: Path) -> None:
        remote = self.resolve(remote)
        try:
            with self._mapped(f"cannot read {remote}"):
                sync = self.device.sync
                # sync.pull would take a missing file for a folder (its mode reads 0): ask first.
                if sync.stat(remote).mode == 0:
                    raise FileNotOnBoard(f"{self.where}: cannot read {remote}: it is not on the board")
                sync.pull_file(remote, local)
        except TransportError:
            local.unlink(missing_ok=True)
            raise

    def _checked(self, argv: list[str], what: str) -> None:
        done = self.run(argv, timeout=_FILE_TIMEOUT)
        if done.exit_code != 0:
            raise BoardCommandFailed(f"{self.board.name}: {what}: {done.stderr.strip()}")

    def close(self) -> None:
        """Nothing is held open: adbutils opens a connection to the server per command or file.

        A TCP serial is deliberately not disconnected: the adb server shares one link per device
        among all its clients, and ``adb disconnect`` would cut off a concurrent job on the same
        board, another EdgeFarm run or a developer's adb shell. The server keeps the link.
        """


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _ensure_server(host: str, port: int) -> None:
    """Start the adb server on this machine when nothing answers at its address."""
    if _answers(host, port):
        return
    if host not in ("127.0.0.1", "localhost"):
        raise BoardUnreachable(f"no adb server answers at {host}:{port}; only one on this machine is started here")
    adb = shutil.which("adb")
    if adb is None:
        raise BoardUnreachable("adb not found: scripts/setup.sh installs Debian's adb")
    # -P alone suffices for another port: the server listens on 127.0.0.1:PORT.
    argv = [adb, "-P", str(port), "start-server"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=_SERVER_START_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BoardUnreachable(f"{shlex.join(argv)} did not finish in {_SERVER_START_TIMEOUT:g} s") from exc
    if done.returncode != 0 or not _answers(host, port):
        raise BoardUnreachable(f"{shlex.join(argv)} failed: {done.stderr.strip()[-500:]}")

"""A test ADB device: a small adbd that speaks the real ADB wire protocol over TCP.

It is the one fake in the ADB tests, standing in for a phone reached with ``adb connect
HOST:5555``: the real adb server connects to it, and adbutils talks to it through that server,
so everything on the controller's side is the code that would drive a real device. Commands
run with this machine's /bin/sh on this machine's files; tests/adbboard.py starts it in its
own network namespace. Python's standard library only.

What it speaks (AOSP adb's protocol.txt, SERVICES.TXT, SYNC.TXT and shell_protocol.h):

* messages: a 24-byte header (command, arg0, arg1, data length, byte-sum checksum, magic =
  command ^ 0xffffffff). CNXN is answered with version 0x01000001 (checksums no longer
  checked), a 256 KiB payload limit and a banner; there is no AUTH.
* streams: OPEN / OKAY / WRTE / CLSE with local and remote ids, and adb's flow control: one
  WRTE in flight per stream until the peer's OKAY; a WRTE is acknowledged once it is consumed.
* ``shell:CMD`` (v1: stdout and stderr on one stream, no exit status) and ``shell,v2,...:CMD``
  (the shell protocol: packets of id, little-endian length and data; stdin 0, stdout 1,
  stderr 2, exit 3, close-stdin 4, window-size 5, ignored as there is no pty). Each command
  runs as ``/bin/sh -c CMD`` in a new session, in "/", with a fixed environment like a
  device's; its output is sent as it comes.
* ``sync:``: STAT, LIST, SEND (``path,mode``, DATA chunks of at most 64 KiB, DONE with the
  mtime), RECV and QUIT, version 1 only. SEND does not create missing folders, as adbd did
  before fixed_push_mkdir: the client has to, and EdgeFarm does.

The banner advertises ``shell_v2`` only (``--features`` can take it away): no stat_v2, ls_v2,
cmd, abb or fixed_push_mkdir, which this device does not implement. Like a real adbd, a
stream the host closes gets its command a SIGHUP, to the shell's pid only: children it
started are left running, so a command past its timeout must be killed with its process
group by whoever started it.
"""

from __future__ import annotations

import argparse
import os
import pwd
import queue
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from typing import IO, Callable


def _id(name: bytes) -> int:
    return int.from_bytes(name, "little")


CNXN, OPEN, OKAY, WRTE, CLSE = (_id(c) for c in (b"CNXN", b"OPEN", b"OKAY", b"WRTE", b"CLSE"))
VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
HEADER = struct.Struct("<6I")

SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN = 0, 1, 2, 3, 4
SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024
FEATURES = ("shell_v2",)  # everything this device can be asked to advertise


class StreamClosed(Exception):
    pass


class Connection:
    """One adb server's transport to this device: messages in, streams dispatched."""

    def __init__(self, sock: socket.socket, banner: bytes) -> None:
        self.sock = sock
        self.banner = banner
        self.max_payload = MAX_PAYLOAD
        self.online = False
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.send_lock = threading.Lock()
        self.streams_lock = threading.Lock()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        header = HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        with self.send_lock:
            self.sock.sendall(header + data)

    def _read_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _checksum, magic = HEADER.unpack(self._read_exactly(HEADER.size))
                if magic != command ^ 0xFFFFFFFF or length > MAX_PAYLOAD:
                    raise EOFError  # not an adb host: drop it, as adbd does
                self._dispatch(command, arg0, arg1, self._read_exactly(length) if length else b"")
        except (EOFError, OSError):
            pass
        finally:
            self._close_all()
            self.sock.close()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == CNXN:
            # A (re)connection: whatever was open belongs to the previous session.
            self._close_all()
            self.max_payload = min(arg1, MAX_PAYLOAD)
            self.online = True
            self.send(CNXN, min(arg0, VERSION), self.max_payload, self.banner)
        elif not self.online:
            return  # nothing but CNXN before the handshake
        elif command == OPEN:
            self._open(arg0, data.rstrip(b"\0").decode(errors="replace"))
        elif command in (OKAY, WRTE, CLSE):
            with self.streams_lock:
                stream = self.streams.get(arg1)
                if command == CLSE:
                    self.streams.pop(arg1, None)
            if stream is None:
                return
            if command == OKAY:
                stream.ready.set()
            elif command == WRTE:
                stream.inbox.put(data)
            else:
                stream.peer_closed()

    def _open(self, remote_id: int, service: str) -> None:
        worker = service_for(service)
        if worker is None:
            self.send(CLSE, 0, remote_id)  # adbd's way of saying "no such service"
            return
        with self.streams_lock:
            local_id, self.next_id = self.next_id, self.next_id + 1
            stream = Stream(self, local_id, remote_id)
            self.streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        threading.Thread(target=stream.run, args=(worker,), daemon=True).start()

    def forget(self, local_id: int) -> None:
        with self.streams_lock:
            self.streams.pop(local_id, None)

    def _close_all(self) -> None:
        with self.streams_lock:
            streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.peer_closed()


class Stream:
    """One open service: a byte pipe each way with adb's one-WRTE-in-flight flow control."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.ready = threading.Event()
        self.ready.set()  # after our OKAY to OPEN, the first WRTE may go
        self.closed = False
        self.closed_by_peer = False
        self.write_lock = threading.Lock()
        self.state_lock = threading.Lock()

    def run(self, worker: Callable[[Stream], None]) -> None:
        try:
            worker(self)
        except StreamClosed:
            pass
        finally:
            self.close()

    def read(self) -> bytes:
        """The next WRTE payload, acknowledged now that it is taken; StreamClosed at the end."""
        data = self.inbox.get()
        if data is None or self.closed:
            raise StreamClosed
        self._send(OKAY, self.local_id, self.remote_id)
        return data

    def write(self, data: bytes) -> None:
        with self.write_lock:
            for start in range(0, len(data), self.conn.max_payload):
                self.ready.wait()
                if self.closed:
                    raise StreamClosed
                self.ready.clear()
                self._send(WRTE, self.local_id, self.remote_id, data[start:start + self.conn.max_payload])

    def _send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        try:
            self.conn.send(command, arg0, arg1, data)
        except OSError:
            self.peer_closed()
            raise StreamClosed from None

    def peer_closed(self) -> None:
        with self.state_lock:
            self.closed = self.closed_by_peer = True
        self._wake()

    def close(self) -> None:
        """Our side is done: tell the host, unless it closed first."""
        with self.state_lock:
            if self.closed:
                return
            self.closed = True
        self.conn.forget(self.local_id)
        try:
            self.conn.send(CLSE, self.local_id, self.remote_id)
        except OSError:
            pass  # the host is gone; nothing to tell
        self._wake()

    def _wake(self) -> None:
        self.ready.set()
        self.inbox.put(None)


# -- services ------------------------------------------------------------------------------


def service_for(service: str) -> Callable[[Stream], None] | None:
    """The worker for an OPEN's service string, or None when this device has no such service."""
    if service == "sync:":
        return sync_service
    name, colon, command = service.partition(":")
    if colon and name.split(",")[0] == "shell":
        args = name.split(",")[1:]
        # No pty here: an interactive shell (empty command or an explicit pty) is refused.
        if not command or "pty" in args:
            return None
        v2 = "v2" in args
        return lambda stream: shell_service(stream, command, v2)
    return None


def device_env() -> dict[str, str]:
    """A fixed environment, as adbd gives its shells: nothing leaks in from whoever started it."""
    user = pwd.getpwuid(os.getuid()).pw_name
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/",
            "SHELL": "/bin/sh", "USER": user, "LOGNAME": user, "HOSTNAME": socket.gethostname()}


def shell_service(stream: Stream, command: str, v2: bool) -> None:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if v2 else subprocess.STDOUT, cwd="/", env=device_env(),
        start_new_session=True, bufsize=0,
    )
    assert proc.stdin is not None and proc.stdout is not None
    pumps = [threading.Thread(target=_pump, args=(stream, proc.stdout, SHELL_STDOUT if v2 else None))]
    if v2:
        assert proc.stderr is not None
        pumps.append(threading.Thread(target=_pump, args=(stream, proc.stderr, SHELL_STDERR)))
    for pump in pumps:
        pump.start()
    threading.Thread(target=_feed, args=(stream, proc, v2), daemon=True).start()
    for pump in pumps:
        pump.join()
    code = proc.wait()
    if v2:
        status = code if code >= 0 else 128 - code  # killed by a signal: 128 + its number, like a shell
        stream.write(_shell_packet(SHELL_EXIT, bytes([status & 0xFF])))


def _shell_packet(kind: int, data: bytes) -> bytes:
    return struct.pack("<BI", kind, len(data)) + data


def _pump(stream: Stream, pipe: IO[bytes], kind: int | None) -> None:
    """Send a pipe's output as it comes; once the host is gone, keep draining it so that the
    command never blocks on a full pipe."""
    fd = pipe.fileno()
    while chunk := os.read(fd, 65536):
        if stream.closed:
            continue
        try:
            stream.write(chunk if kind is None else _shell_packet(kind, chunk))
        except StreamClosed:
            pass
    pipe.close()


def _feed(stream: Stream, proc: subprocess.Popen[bytes], v2: bool) -> None:
    """Host to command: stdin data and close-stdin; a stream closed by the host means SIGHUP."""
    assert proc.stdin is not None
    stdin: IO[bytes] | None = proc.stdin
    buf = bytearray()
    try:
        while True:
            buf += stream.read()
            while buf:
                if not v2:
                    kind, data, buf = SHELL_STDIN, bytes(buf), bytearray()
                elif len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "little"):
                    size = int.from_bytes(buf[1:5], "little")
                    kind, data = buf[0], bytes(buf[5:5 + size])
                    del buf[:5 + size]
                else:
                    break
                if stdin is None:
                    continue  # input after close-stdin, or to a command that stopped reading
                if kind == SHELL_STDIN:
                    try:
                        stdin.write(data)
                        continue
                    except BrokenPipeError:
                        pass  # the command stopped reading: as good as close-stdin
                elif kind != SHELL_CLOSE_STDIN:
                    continue  # window size: there is no pty to resize
                stdin.close()  # unbuffered: nothing left to flush
                stdin = None
    except StreamClosed:
        if stream.closed_by_peer:
            proc.send_signal(signal.SIGHUP)  # a no-op once the command has been reaped
    finally:
        if stdin is not None:
            stdin.close()


class SyncReader:
    """The sync protocol is a byte stream that WRTE boundaries may cut anywhere."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.stream.read()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def request(self) -> tuple[bytes, int]:
        ident, length = struct.unpack("<4sI", self.take(8))
        return ident, length


def _fail(message: str) -> bytes:
    data = message.encode()
    return b"FAIL" + struct.pack("<I", len(data)) + data


def sync_service(stream: Stream) -> None:
    reader = SyncReader(stream)
    while True:
        ident, length = reader.request()
        if ident == b"QUIT":
            return
        if ident not in (b"STAT", b"LIST", b"SEND", b"RECV") or length > SYNC_PATH_MAX:
            stream.write(_fail(f"unknown or malformed sync request {ident!r}"))
            return
        path = reader.take(length).decode(errors="surrogateescape")
        if ident == b"STAT":
            stream.write(b"STAT" + _stat_fields(path))
        elif ident == b"LIST":
            stream.write(_list(path))
        elif ident == b"RECV":
            _recv(stream, path)
        elif not _send(stream, reader, path):
            return


def _stat_fields(path: str) -> bytes:
    """mode, size, mtime as lstat sees them; all zero when there is nothing there."""
    try:
        st = os.lstat(path)
    except OSError:
        return struct.pack("<III", 0, 0, 0)
    return struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF)


def _list(path: str) -> bytes:
    out = bytearray()
    try:
        names = os.listdir(path)
    except OSError:
        names = []  # adbd, too, answers an unreadable directory with an empty listing
    for name in names:
        fields = _stat_fields(os.path.join(path, name))
        encoded = name.encode(errors="surrogateescape")
        out += b"DENT" + fields + struct.pack("<I", len(encoded)) + encoded
    return bytes(out + b"DONE" + bytes(16))


def _recv(stream: Stream, path: str) -> None:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        stream.write(_fail(f"open failed: {exc.strerror}"))
        return
    with fh:
        while chunk := fh.read(SYNC_DATA_MAX):
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    stream.write(b"DONE" + bytes(4))


def _send(stream: Stream, reader: SyncReader, spec: str) -> bool:
    """Receive one file; the answer (OKAY or FAIL) comes after DONE, as adb expects. False
    when the request stream itself is broken and the service must end."""
    path, _, mode_text = spec.rpartition(",")
    error = None
    fd = None
    try:
        mode = int(mode_text)
        if not stat.S_ISREG(mode):
            raise ValueError("only regular files can be sent to this test device")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o777)
        os.fchmod(fd, mode & 0o777)  # the mode asked for, whatever the umask
    except (OSError, ValueError) as exc:
        error = f"couldn't create file {path}: {getattr(exc, 'strerror', None) or exc}"
    try:
        # The data comes whatever happened above: it is read to DONE, then answered.
        while True:
            ident, length = reader.request()
            if ident == b"DONE":
                mtime = length
                break
            if ident != b"DATA" or length > SYNC_DATA_MAX:
                stream.write(_fail(f"expected DATA of at most {SYNC_DATA_MAX} bytes, got {ident!r} {length}"))
                return False
            data = reader.take(length)
            if error is None and fd is not None:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    error = f"write to {path} failed: {exc.strerror}"
    finally:
        if fd is not None:
            os.close(fd)
    if error is not None:
        if fd is not None:
            os.unlink(path)  # no half-written file is left behind
        stream.write(_fail(error))
        return True
    os.utime(path, (mtime, mtime))
    stream.write(b"OKAY" + bytes(4))
    return True


# -- daemon --------------------------------------------------------------------------------


def banner(features: tuple[str, ...]) -> bytes:
    props = "ro.product.name=edgefarm_test;ro.product.model=EdgeFarm_test_device;ro.product.device=edgefarm_test"
    return f"device::{props};features={','.join(features)}".encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A test ADB device (adbd) for EdgeFarm's tests.")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--features", default=",".join(FEATURES),
                        help=f"features to advertise, comma-separated, from: {', '.join(FEATURES)}")
    args = parser.parse_args(argv)
    features = tuple(f for f in args.features.split(",") if f)
    unknown = set(features) - set(FEATURES)
    if unknown:
        parser.error(f"this device does not implement {', '.join(sorted(unknown))}")
    server = socket.create_server((args.host, args.port))
    while True:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Connection(sock, banner(features)).serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

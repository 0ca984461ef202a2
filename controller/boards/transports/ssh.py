"""Linux boards over SSH (paramiko): host keys verified, argv quoted, timeouts everywhere.

Host keys are checked against the board's known_hosts file. An unknown key is refused unless
the board opts in to ``accept_new_host_key`` (then it is saved, like OpenSSH's accept-new);
a changed key is always refused. Commands are argv lists joined with shlex quoting; a command
that outlives its timeout is killed on the board with its whole process group.
"""

from __future__ import annotations

import functools
import os
import posixpath
import socket
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

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
from controller.errors import BoardUnreachable, CommandTimeout, FileNotOnBoard, TransportError

if TYPE_CHECKING:
    from controller.config.inventory import BoardSpec, SshHop


@functools.cache
def _errors() -> ErrorTable:
    """paramiko's errors, and the socket errors under it, as EdgeFarm's (see ``mapped_errors``)."""
    import paramiko

    return (
        ((FileNotFoundError,), FileNotOnBoard),  # SFTP's "no such file"
        # A broken session, a protocol error, a closed channel or socket, a stalled link.
        ((paramiko.SSHException, paramiko.SFTPError, EOFError, ConnectionError, socket.timeout), BoardUnreachable),
        ((OSError,), TransportError),  # an SFTP refusal over a live link: permissions, a full disk
    )


@register("ssh")
class SshTransport(Transport):
    default_workdir = "~/.edgefarm"

    def __init__(self, board: "BoardSpec") -> None:
        super().__init__(board)
        ssh = board.ssh
        if ssh is None:
            raise TransportError(f"board {board.name}: transport ssh needs an 'ssh' section")
        self.settings = ssh
        self._jump = _connect(ssh.jump, ssh.dead_after, _socket(ssh.jump, ssh.dead_after)) if ssh.jump else None
        try:
            self.client = _connect(ssh, ssh.dead_after, self._socket_to_board())
        except BaseException:
            if self._jump is not None:
                self._jump.close()
            raise
        self._sftp: Any = None
        self._home: str | None = None

    def _socket_to_board(self) -> Any:
        ssh = self.settings
        if self._jump is None or ssh.jump is None:
            return _socket(ssh, ssh.dead_after)
        # Like ssh -J: a channel through the jump host is the board connection's socket.
        with mapped_errors(_errors(), f"{_where(ssh)} via {_where(ssh.jump)}", lost=True):
            return _active(self._jump, _where(ssh.jump)).open_channel(
                "direct-tcpip", (ssh.host, ssh.port), ("127.0.0.1", 0), timeout=ssh.connect_timeout)

    def _mapped(self, what: str) -> AbstractContextManager[None]:
        """paramiko's errors raised in the block as EdgeFarm's, the message starting with the board's name."""
        return mapped_errors(_errors(), f"{self.board.name}: {what}", self._lost)

    def _lost(self) -> bool:
        link = self.client.get_transport()
        return link is None or not link.is_active()

    # -- commands --------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        with self._mapped(f"cannot start {argv[0]}"):
            chan = _active(self.client, self.board.name).open_session(timeout=self.settings.connect_timeout)
            chan.exec_command(shell_line(argv, cwd))
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        with self._mapped(f"the connection was lost during {argv[0]}"):
            chan.settimeout(0.2)
            while True:
                _drain(chan, out, err)
                if chan.exit_status_ready():
                    _drain(chan, out, err)
                    break
                if time.monotonic() > deadline:
                    self._kill(out)
                    chan.close()
                    raise CommandTimeout(argv, timeout, err.decode(errors="replace")[-2000:])
                if (chan.closed or self._lost()) and not chan.exit_status_ready():
                    raise BoardUnreachable(f"{self.board.name}: the connection was lost during {argv[0]}")
            code = chan.recv_exit_status()
            chan.close()
        if code == -1 and self._lost():
            # paramiko's -1 is "closed without an exit status"; with the connection gone too,
            # the link or sshd died under the command: a loss, not a result.
            raise BoardUnreachable(f"{self.board.name}: the connection was lost during {argv[0]}")
        return Completed(code, split_pid(out)[1], err.decode(errors="replace"))

    def _kill(self, out: bytearray) -> None:
        pid = split_pid(out)[0]
        if pid is not None:
            try:
                with self._mapped("cannot kill the timed-out command"):
                    _, stdout, _ = self.client.exec_command(kill_line(pid), timeout=10)
                    stdout.channel.recv_exit_status()
            except TransportError:
                pass  # the board is going away anyway; the timeout is what gets reported

    # -- files -----------------------------------------------------------------------------

    def _sftp_client(self) -> Any:
        if self._sftp is None:
            with self._mapped("sftp"):
                self._sftp = self.client.open_sftp()
        return self._sftp

    def resolve(self, path: str) -> str:
        if path.startswith("~"):
            if self._home is None:
                with self._mapped("cannot find the home folder"):
                    self._home = self._sftp_client().normalize(".")
            path = self._home + path[1:]
        return path

    def put(self, local: Path, remote: str) -> None:
        sftp = self._sftp_client()
        remote = self.resolve(remote)
        with self._mapped(f"cannot write {remote}"):
            self._makedirs(posixpath.dirname(remote))
            tmp = remote + ".part"
            sftp.put(str(local), tmp)
            sftp.posix_rename(tmp, remote)  # never a half-written file under the real name

    def get(self, remote: str, local: Path) -> None:
        try:
            with self._mapped(f"cannot read {remote}"):
                self._sftp_client().get(self.resolve(remote), str(local))
        except TransportError:
            local.unlink(missing_ok=True)  # paramiko makes the local file before it asks for the remote one
            raise

    def _makedirs(self, path: str) -> None:
        sftp = self._sftp_client()
        parts = [p for p in path.split("/") if p]
        current = "/" if path.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part)
            try:
                sftp.stat(current)
            except FileNotFoundError:
                sftp.mkdir(current)

    def close(self) -> None:
        sftp, self._sftp = self._sftp, None
        with self._mapped("cannot close the connection"):
            try:
                if sftp is not None:
                    sftp.close()
            finally:
                self.client.close()  # paramiko's close is a no-op on a closed client: closing twice is harmless
                if self._jump is not None:
                    self._jump.close()


def _active(client: Any, where: str) -> Any:
    """The client's live SSH connection (paramiko's Transport); BoardUnreachable when it has none."""
    link = client.get_transport()
    if link is None or not link.is_active():
        raise BoardUnreachable(f"{where}: the SSH connection is closed")
    return link


def _where(hop: "SshHop") -> str:
    return f"{hop.user}@{hop.host}:{hop.port}"


def _socket(hop: "SshHop", dead_after: float | None = None) -> socket.socket:
    """A TCP connection that notices a dead link within ``dead_after`` seconds.

    Without this, a board whose cable is pulled leaves the connection waiting on TCP
    retransmissions for a quarter of an hour; TCP_USER_TIMEOUT bounds how long sent data may
    stay unacknowledged, and the SSH keepalives set in _connect make sure there is data to send.
    """
    with mapped_errors(_errors(), f"{_where(hop)}: cannot connect", lost=True):
        sock = socket.create_connection((hop.host, hop.port), timeout=hop.connect_timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if dead_after and hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; elsewhere keepalives alone
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))
    return sock


def _connect(hop: "SshHop", dead_after: float, sock: Any) -> Any:
    """An authenticated SSH client over ``sock``, the server's host key checked first."""
    import paramiko

    known_hosts = os.path.expanduser(hop.known_hosts)
    client = paramiko.SSHClient()
    if os.path.isfile(known_hosts):
        client.load_host_keys(known_hosts)
    policy = _SaveNewKey(known_hosts) if hop.accept_new_host_key else _RefuseNewKey(_where(hop), known_hosts)
    client.set_missing_host_key_policy(policy)
    where = _where(hop)
    try:
        with mapped_errors(_errors(), where, lost=True):
            try:
                client.connect(
                    hop.host, port=hop.port, username=hop.user, sock=sock,
                    key_filename=os.path.expanduser(hop.key_file) if hop.key_file else None,
                    allow_agent=hop.key_file is None, look_for_keys=False,
                    timeout=hop.connect_timeout, banner_timeout=hop.connect_timeout,
                    auth_timeout=hop.connect_timeout,
                )
            except paramiko.BadHostKeyException as exc:  # the table's message would not say what to do
                raise BoardUnreachable(
                    f"{where}: the host key changed (got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}); "
                    f"refused. If the board was reinstalled, remove its old line from {known_hosts}") from exc
            _active(client, where).set_keepalive(max(1, int(dead_after / 4)))
    except BaseException:
        client.close()
        sock.close()
        raise
    return client


def _drain(chan: Any, out: bytearray, err: bytearray) -> None:
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)
    if not (chan.recv_ready() or chan.recv_stderr_ready() or chan.exit_status_ready()):
        time.sleep(0.02)


class _RefuseNewKey:
    """paramiko's RejectPolicy, saying what to do about it."""

    def __init__(self, where: str, known_hosts: str) -> None:
        self.where, self.known_hosts = where, known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise BoardUnreachable(f"{self.where}: unknown host key, refused; add it to {self.known_hosts} "
                               "(ssh-keyscan) or set accept_new_host_key: true for this board")


class _SaveNewKey:
    """OpenSSH's accept-new: trust a key seen for the first time and remember it."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts) or ".", exist_ok=True)
        client.save_host_keys(self.known_hosts)

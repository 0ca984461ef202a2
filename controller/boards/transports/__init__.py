"""Transports: how the controller reaches a board.

One small interface (run, put, get, close) in the manner of httpx's transports, and a
registry in the manner of labgrid's drivers: a backend registers under a name, duplicates are
refused, and the table (``controller.plugins.TRANSPORTS``) is lazy so that importing it loads no
SSH or ADB library.

Each backend maps its library's errors onto this tree, with ``raise ... from exc``:

    TransportError
    ├── BoardUnreachable   the board cannot be reached or was lost
    └── CommandTimeout     a command ran past its timeout and was killed
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from controller.config.inventory import Board
from controller.plugins import TRANSPORTS


class TransportError(Exception):
    pass


class BoardUnreachable(TransportError):
    pass


class CommandTimeout(TransportError):
    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        super().__init__(f"{argv[0]} ran past its {timeout:g} s timeout and was killed")
        self.stderr = stderr


@dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: str
    stderr: str


class Transport(ABC):
    """A way to run commands on a board and move files to and from it."""

    # Where the agent lives on the board when the inventory names no workdir.
    default_workdir = "~/.edgefarm"

    def __init__(self, board: Board) -> None:
        self.board = board

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        """Run argv (a list, never a shell string) and wait at most ``timeout`` seconds."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None: ...

    @abstractmethod
    def get(self, remote: str, local: Path) -> None: ...

    def resolve(self, path: str) -> str:
        """The absolute form of a board path (agent commands run with another cwd)."""
        return path

    def close(self) -> None:
        return None


# -- for transports that reach a remote shell (ssh, adb) ----------------------------------------

def shell_line(argv: Sequence[str], cwd: str | None) -> str:
    """One shell line that prints its pid, then becomes ``argv`` run in ``cwd``: every part quoted.

    The remote daemon (sshd, adbd) starts the shell as a session leader, so that pid names the
    command's whole process group if it has to be killed (see ``kill_line``).
    """
    command = shlex.join(list(argv))
    if cwd:
        command = f"cd -- {shlex.quote(cwd)} && {command}"
    return "echo $$; exec sh -c " + shlex.quote(command)


def split_pid(out: bytes) -> tuple[str | None, str]:
    """(the pid ``shell_line`` printed, or None; the command's own stdout)."""
    first, _, rest = out.decode(errors="replace").partition("\n")
    return (first.strip() if first.strip().isdigit() else None), rest


def kill_line(pid: str) -> str:
    # No "--" before -PID: dash's kill refuses it; bash and mksh (Android's sh) take both.
    return f"kill -KILL -{pid} {pid}"


def register(name: str) -> Callable[[type[Transport]], type[Transport]]:
    """Class decorator adding a transport under ``name`` (controller.plugins.TRANSPORTS)."""
    return TRANSPORTS.register(name)


def open_transport(board: Board) -> Transport:
    transport: Transport = TRANSPORTS.get(board.transport)(board)
    return transport

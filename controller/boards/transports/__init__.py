"""Transports: how the controller reaches a board.

One small interface (run, put, get, resolve, close) in the manner of httpx's transports, and a
registry in the manner of labgrid's drivers: a backend registers under a name, duplicates are
refused, and the table (``controller.plugins.TRANSPORTS``) is lazy so that importing it loads no
SSH or ADB library.

Errors are mapped at the boundary, as httpx maps httpcore's: each backend has one table from its
library's exception types to the ``TransportError`` branch of ``controller.errors`` and wraps its
library calls in :func:`mapped_errors`, which raises the mapped error ``from`` the library's. What a
backend finds itself (a command past its timeout, a stream that ended early) it raises directly.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from controller.config.inventory import BoardSpec
from controller.errors import BoardUnreachable, TransportError
from controller.plugins import TRANSPORTS

# A backend's error table: rows of (its library's exception types, the error they become), tried
# in order, so a row for a subclass (FileNotFoundError) goes before its base's (OSError).
ErrorTable = Sequence[tuple[tuple[type[BaseException], ...], type[TransportError]]]


@contextmanager
def mapped_errors(table: ErrorTable, what: str, lost: bool | Callable[[], bool] = False) -> Iterator[None]:
    """Raise the table's error for a library error raised in the block, ``from`` it, as
    ``"<what>: <the library's words>"``. Where ``lost`` holds (True while connecting: nothing was
    reached yet; or a check that the link is gone), any error of the table is BoardUnreachable: a
    socket error then is the lost link, not a refusal by the board. Errors the table does not name
    (EdgeFarm's own among them) pass through untouched."""
    try:
        yield
    except tuple(t for types, _ in table for t in types) as exc:
        mapped: type[TransportError] = BoardUnreachable
        if not (lost() if callable(lost) else lost):
            mapped = next(error for types, error in table if isinstance(exc, types))
        raise mapped(f"{what}: {str(exc).strip() or type(exc).__name__}") from exc


@dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: str
    stderr: str


class Transport(ABC):
    """A way to run commands on a board and move files to and from it.

    The contract every backend keeps (tests/controller/test_transport_contract.py): only
    ``controller.errors.TransportError`` and its subclasses leave these methods, never a library's
    own exception.
    """

    # Where the agent lives on the board when the inventory names no workdir.
    default_workdir = "~/.edgefarm"
    # Whether the board's jobs run on the CPUs of the machine that reaches it (the local board),
    # so that work on that machine, a conversion say, would slow what the board measures.
    measures_on_host = False

    def __init__(self, board: BoardSpec) -> None:
        self.board = board

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        """Run argv (a list, never a shell string) in ``cwd`` and wait at most ``timeout`` seconds;
        past it, the command and its children are killed and CommandTimeout raised. A link lost
        during the command raises BoardUnreachable, never an exit code."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Write ``local`` to ``remote``, creating its folders; never a half-written file under that name."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Read ``remote`` into ``local``: FileNotOnBoard when it is not there (and ``local`` not made)."""

    def resolve(self, path: str) -> str:
        """The absolute form of a board path (agent commands run with another cwd)."""
        return path

    def close(self) -> None:
        """Let the board go; closing twice is harmless."""
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


def split_pid(out: bytes | bytearray) -> tuple[str | None, str]:
    """(the pid ``shell_line`` printed, or None; the command's own stdout)."""
    first, _, rest = out.decode(errors="replace").partition("\n")
    return (first.strip() if first.strip().isdigit() else None), rest


def kill_line(pid: str) -> str:
    # No "--" before -PID: dash's kill refuses it; bash and mksh (Android's sh) take both.
    return f"kill -KILL -{pid} {pid}"


def register(name: str) -> Callable[[type[Transport]], type[Transport]]:
    """Class decorator adding a transport under ``name`` (controller.plugins.TRANSPORTS)."""
    return TRANSPORTS.register(name)


def open_transport(board: BoardSpec) -> Transport:
    transport: Transport = TRANSPORTS.get(board.transport)(board)
    return transport

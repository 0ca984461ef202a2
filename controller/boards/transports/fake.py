"""A fake board for tests: the local transport in a private folder, failing where a test says.

Not for real boards. A test scripts faults for a board name, and the fake board of that name
fails on those attempts as a real link would; every other call runs for real, as on the local
board, so BoardSession pushes the real agent and runs real jobs on it (no root, no network)::

    from controller.boards.transports import fake

    fake.script("b1", "connect", ["ok", "refused"])          # the second connection is refused
    fake.script("b1", "run", ["lost"], match="job.json")     # the first agent job loses the link
    fake.script("b1", "put", ["corrupt"], match="/cache/")   # the first artifact pushed arrives altered
    ...
    fake.events("b1")   # what happened: ["connect ok", "run lost: ...", "connect refused", ...]
    fake.reset()        # a test fixture's job: no script outlives its test

The faults, by operation (a call past its script, or matching none, is "ok"):

- connect ``refused``: opening the transport raises BoardUnreachable.
- run ``lost``: the command starts, the link drops a moment later (the command is killed with
  it, as sshd kills a session's commands) and BoardUnreachable is raised; the transport stays
  dead, every later call raising BoardUnreachable, until the session opens a new one.
- run ``hung``: the command starts and is killed a moment later; CommandTimeout is raised at once
  instead of after the command's timeout.
- put ``corrupt``: the file arrives with its last byte altered (a bad flash card, a copy cut
  short), so the agent's sha256 check refuses it on the board.
- put and get ``lost``: BoardUnreachable before anything is moved; the transport stays dead.

``forge(board, text)`` makes the next result record fetched from that board ``text`` instead of
what the agent wrote: a board that is broken, or not ours, answering with a forged record.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from controller.boards.transports import Completed, register
from controller.boards.transports.local import LocalTransport
from controller.config.inventory import BoardSpec
from controller.errors import BoardUnreachable, CommandTimeout

FAULTS: dict[str, tuple[str, ...]] = {
    "connect": ("ok", "refused"),
    "run": ("ok", "lost", "hung"),
    "put": ("ok", "lost", "corrupt"),
    "get": ("ok", "lost"),
}
# How long a command scripted to be lost or hung runs before it is cut off.
_MOMENT_S = 0.05


@dataclass
class _Rule:
    op: str
    outcomes: list[str]
    match: str


_lock = threading.Lock()  # a board with concurrency > 1 runs jobs in several threads
_scripts: dict[str, list[_Rule]] = {}
_events: dict[str, list[str]] = {}
_forged: dict[str, list[str]] = {}


def script(board: str, op: str, outcomes: Sequence[str], match: str = "") -> None:
    """Fail the next calls of ``op`` on the fake board ``board`` with ``outcomes``, in order.

    Only calls whose subject contains ``match`` count: the command line for run (shlex-joined),
    the board path for put and get; connect has no subject. Rules add up, the oldest first.
    """
    if op not in FAULTS:
        raise ValueError(f"fake transport: no operation {op!r}; one of {', '.join(FAULTS)}")
    unknown = [o for o in outcomes if o not in FAULTS[op]]
    if unknown:
        raise ValueError(f"fake transport: {op} cannot be {unknown[0]!r}; one of {', '.join(FAULTS[op])}")
    with _lock:
        _scripts.setdefault(board, []).append(_Rule(op, list(outcomes), match))


def events(board: str) -> list[str]:
    """Every connect of ``board`` and every fault it suffered, oldest first: "op outcome[: subject]"."""
    with _lock:
        return list(_events.get(board, []))


def forge(board: str, text: str) -> None:
    """The next result record fetched from the fake board ``board`` reads ``text`` (queued)."""
    with _lock:
        _forged.setdefault(board, []).append(text)


def reset() -> None:
    """Forget every script, event and forged record."""
    with _lock:
        _scripts.clear()
        _events.clear()
        _forged.clear()


def _next(board: str, op: str, subject: str) -> str:
    with _lock:
        outcome = "ok"
        for rule in _scripts.get(board, []):
            if rule.op == op and rule.outcomes and rule.match in subject:
                outcome = rule.outcomes.pop(0)
                break
        if op == "connect" or outcome != "ok":
            _events.setdefault(board, []).append(f"{op} {outcome}" + (f": {subject}" if subject else ""))
        return outcome


@register("fake")
class FakeTransport(LocalTransport):
    """The local transport in a private folder, failing where ``script`` says (see the module)."""

    @property
    def default_workdir(self) -> str:  # type: ignore[override]
        # Not the workspace the local board uses: a fake board never shares files with a real one.
        return os.path.join(tempfile.gettempdir(), "edgefarm-fake-boards")

    def __init__(self, board: BoardSpec) -> None:
        super().__init__(board)
        self._dead = False
        if _next(board.name, "connect", "") == "refused":
            raise BoardUnreachable(f"{board.name}: cannot connect: connection refused (scripted)")

    def _link(self, op: str, subject: str) -> str:
        """The scripted outcome of this call; BoardUnreachable once the link is lost."""
        if self._dead:
            raise BoardUnreachable(f"{self.board.name}: the connection is closed")
        outcome = _next(self.board.name, op, subject)
        if outcome == "lost":
            self._dead = True
        return outcome

    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        outcome = self._link("run", shlex.join(argv))
        if outcome == "ok":
            return super().run(argv, timeout, cwd)
        with contextlib.suppress(CommandTimeout):  # it starts on the board, and is cut off and killed
            super().run(argv, _MOMENT_S, cwd)
        if outcome == "hung":
            raise CommandTimeout(argv, timeout, "(scripted: hung)")
        raise BoardUnreachable(f"{self.board.name}: the connection was lost during {argv[0]} (scripted)")

    def put(self, local: Path, remote: str) -> None:
        outcome = self._link("put", remote)
        if outcome == "lost":
            raise BoardUnreachable(f"{self.board.name}: lost while writing {remote} (scripted)")
        super().put(local, remote)
        if outcome == "corrupt":
            target = Path(self.resolve(remote))
            data = bytearray(target.read_bytes() or b"\0")
            data[-1] ^= 0xFF
            target.write_bytes(bytes(data))

    def get(self, remote: str, local: Path) -> None:
        if self._link("get", remote) == "lost":
            raise BoardUnreachable(f"{self.board.name}: lost while reading {remote} (scripted)")
        super().get(remote, local)
        with _lock:
            forged = _forged.get(self.board.name) if remote.endswith("result.json") else None
            text = forged.pop(0) if forged else None
        if text is not None:
            local.write_text(text)

    def close(self) -> None:
        self._dead = True  # like a closed connection: a session must open a new one

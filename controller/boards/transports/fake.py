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

A board that is broken, or not ours, answering with forged records:

- ``forge(board, text)``: the next result record fetched from that board reads ``text`` (str or
  bytes: anything at all, JSON or not) instead of what the agent wrote.
- ``forge(board, change={"latency.p50": None}, drop=["engine.version"])``: the record the agent
  really wrote, with those dotted paths set or removed (so it still answers its own job).
- ``match``: only a record whose board path contains it counts (``"/jobs/job-"``: a run's jobs,
  not the health check's golden job); ``record="probe"``: the next probe the agent prints instead.

The script lives in files (``EDGEFARM_FAKE_STATE``, else a folder in the temporary directory), not
in this process: a run's boards are driven from Ray actors, other processes, which read the same
script. Forgeries are used once each, in the order given.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

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
RECORDS = ("result", "probe")
# How long a command scripted to be lost or hung runs before it is cut off.
_MOMENT_S = 0.05


@dataclass
class _Forgery:
    record: str
    match: str
    file: str | None  # the forged text, in a file of its own (it may be large)
    change: dict[str, Any]
    drop: list[str]

    def apply(self, real: bytes) -> bytes:
        if self.file is not None:
            return Path(self.file).read_bytes()
        record = json.loads(real)
        for path, value in self.change.items():
            *parents, last = path.split(".")
            inner = record
            for key in parents:
                if not isinstance(inner.get(key), dict):
                    inner[key] = {}
                inner = inner[key]
            inner[last] = value
        for path in self.drop:
            *parents, last = path.split(".")
            inner = record
            for key in parents:
                inner = inner[key]
            inner.pop(last, None)
        return json.dumps(record).encode()


def state_dir() -> Path:
    """Where scripts, events and forgeries live, for every process of this user."""
    return Path(os.environ.get("EDGEFARM_FAKE_STATE") or
                os.path.join(tempfile.gettempdir(), f"edgefarm-fake-state-{os.getuid()}"))


@contextlib.contextmanager
def _state(board: str) -> Iterator[dict[str, Any]]:
    """``board``'s script, read and written back under a lock that every process takes."""
    folder = state_dir()
    with open(_lock_path(folder), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = folder / f"{board}.json"
        state = json.loads(path.read_text()) if path.exists() else {"rules": [], "events": [], "forged": []}
        before = json.dumps(state)
        yield state
        if json.dumps(state) != before:
            tmp = path.with_suffix(".part")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)


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
    with _state(board) as state:
        state["rules"].append({"op": op, "outcomes": list(outcomes), "match": match})


def events(board: str) -> list[str]:
    """Every connect of ``board`` and every fault it suffered, oldest first: "op outcome[: subject]"."""
    with _state(board) as state:
        return list(state["events"])


def forge(board: str, text: str | bytes | None = None, *, change: dict[str, Any] | None = None,
          drop: Sequence[str] = (), match: str = "", record: Literal["result", "probe"] = "result") -> None:
    """The next ``record`` fetched from the fake board ``board`` (queued) is forged: ``text`` as
    it is, or the real one with ``change`` and ``drop`` applied (see the module)."""
    if record not in RECORDS:
        raise ValueError(f"fake transport: no record {record!r}; one of {', '.join(RECORDS)}")
    if (text is None) == (change is None and not drop):
        raise ValueError("fake transport: forge either a text or a change of the real record")
    file = None
    if text is not None:
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        forged = folder / f"{board}.forged-{uuid.uuid4().hex}"
        forged.write_bytes(text.encode() if isinstance(text, str) else text)
        file = str(forged)
    with _state(board) as state:
        state["forged"].append({"record": record, "match": match, "file": file,
                                "change": dict(change or {}), "drop": list(drop)})


def reset() -> None:
    """Forget every script, event and forged record."""
    folder = state_dir()
    with open(_lock_path(folder), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in folder.iterdir():
            if path.name != ".lock":
                path.unlink()


def _lock_path(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / ".lock"


def _next(board: str, op: str, subject: str) -> str:
    with _state(board) as state:
        outcome = "ok"
        for rule in state["rules"]:
            if rule["op"] == op and rule["outcomes"] and rule["match"] in subject:
                outcome = rule["outcomes"].pop(0)
                break
        if op == "connect" or outcome != "ok":
            state["events"].append(f"{op} {outcome}" + (f": {subject}" if subject else ""))
        return outcome


def _forgery(board: str, record: str, subject: str) -> _Forgery | None:
    """The next forgery of ``record`` queued for ``board`` that matches ``subject``, taken off the queue."""
    with _state(board) as state:
        for n, entry in enumerate(state["forged"]):
            if entry["record"] == record and entry["match"] in subject:
                del state["forged"][n]
                state["events"].append(f"forged {record}: {subject}")
                return _Forgery(**entry)
    return None


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
        command = shlex.join(argv)
        outcome = self._link("run", command)
        if outcome == "ok":
            done = super().run(argv, timeout, cwd)
            forged = _forgery(self.board.name, "probe", command) if "probe" in argv and done.exit_code == 0 else None
            return done if forged is None else Completed(0, forged.apply(done.stdout.encode()).decode(errors="replace"),
                                                         done.stderr)
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
        forged = _forgery(self.board.name, "result", remote) if remote.endswith("result.json") else None
        if forged is not None:
            local.write_bytes(forged.apply(local.read_bytes()))
            if forged.file:
                Path(forged.file).unlink(missing_ok=True)

    def close(self) -> None:
        self._dead = True  # like a closed connection: a session must open a new one

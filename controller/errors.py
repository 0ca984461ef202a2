"""Every error EdgeFarm raises on purpose, under one root.

    EdgeFarmError                 the root: ``except EdgeFarmError`` catches the project's own errors
    ├── UserError                 the user can fix it: the CLI prints one line and exits 2, no traceback
    │   ├── ConfigError           a spec or inventory file is wrong (names file, key and value)
    │   └── ModelError            a model file is missing, not ONNX, corrupt, or has other inputs
    ├── TransportError            a board failed us; stored as a failed job or a skipped board, never an exit
    │   ├── BoardUnreachable      the board cannot be reached or was lost: worth a reconnect and a new attempt
    │   ├── CommandTimeout        a command ran past its timeout and was killed with its process group
    │   ├── BoardCommandFailed    a command the controller needed exited non-zero on the board
    │   ├── FileNotOnBoard        a file the controller asked for is not on the board
    │   └── FileCorrupt           a file on the board does not match its sha256, even after a new push
    ├── ConversionError           a converter refused or failed (controller.convert); stored on its jobs
    ├── PassError                 a variant pass cannot work with a model or an option; stored on the variant
    │   ├── PruningError          (controller.passes.pruning)
    │   └── FinetuneUnsupported   the graph has an op the fine-tuning interpreter lacks: surgery alone
    └── NativeOutputError         a native tool's output lacks what its summary needs (controller.boards.native)

Only ``UserError`` reaches the user as an exit status: everything else is data about a board, a
model or a tool, stored with the job or variant it spoiled, so that one bad part never stops a run.

Each transport maps its library's errors (paramiko, adbutils, OSError) onto the ``TransportError``
branch at its boundary, through one table (``controller.boards.transports.mapped_errors``); no
library exception leaves a transport.

``ValueError`` keeps its Python meaning, a caller passing an argument that cannot be honoured
(a dataset kind a model cannot render, a setting a native tool lacks), and is what pydantic
validators raise; the boundary that called turns it into one of the errors above (a
``ConfigError`` naming the key, a ``ModelError``, a failed job).

Outside the tree, on purpose: the agent's errors (``agent.engines.EngineError`` and
``EngineUnavailable``, ``agent.hygiene.ThermalError``). The agent runs on boards with the standard
library alone and never imports ``controller``; its failures come back as failed result records,
not exceptions. ``agent.registry``'s ``UnknownPlugin`` and ``DuplicatePlugin`` stay outside too,
though the controller's plugin tables use that registry: a plugin name a user writes is checked when
the spec or inventory is validated (a ``ConfigError``), so these two mean a mistake in the code.
"""

from __future__ import annotations

from typing import Sequence


class EdgeFarmError(Exception):
    """The root of every error EdgeFarm raises on purpose (the tree is in the module docstring)."""


# -- the user can fix it ------------------------------------------------------------------------

class UserError(EdgeFarmError):
    """An error the user can fix. The CLI prints ``edgefarm: error: <message>`` and exits 2."""


class ConfigError(UserError):
    pass


class ModelError(UserError):
    pass


# -- a board failed us --------------------------------------------------------------------------

class TransportError(EdgeFarmError):
    """A board did not do what the controller asked. Raised itself when the board refuses (no
    permission, a full disk): the same request would fail again, so it is not retried."""


class BoardUnreachable(TransportError):
    """The board cannot be reached, or the link to it was lost during an operation."""


class CommandTimeout(TransportError):
    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        super().__init__(f"{argv[0]} ran past its {timeout:g} s timeout and was killed")
        self.stderr = stderr


class BoardCommandFailed(TransportError):
    """A command the controller needed (the agent, a shell tool) exited non-zero on the board."""


class FileNotOnBoard(TransportError):
    """A file the controller asked for (a result, a program) is not on the board."""


class FileCorrupt(TransportError):
    """A file on the board does not match its sha256, even after a new push."""


# -- variants and conversions -------------------------------------------------------------------

class PassError(EdgeFarmError):
    """A variant pass cannot work with a model or an option; the variant is stored as failed."""


def one_line(exc: BaseException) -> str:
    """The last line of an exception (unwrapping Ray's task errors), short enough to store."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]

"""Errors a user can act on.

    EdgeFarmError            one line for the user, exit status 2, never a traceback
    ├── ConfigError          a spec or inventory file is wrong (names file, key and value)
    └── ModelError           a model file is missing, not ONNX, corrupt, or has other inputs

Transport failures live in ``controller.boards.transports`` and become stored failed jobs, not
exits: a board that misbehaves is data.
"""

from __future__ import annotations


class EdgeFarmError(Exception):
    """An error the user can fix. The CLI prints ``edgefarm: error: <message>`` and exits 2."""


class ConfigError(EdgeFarmError):
    pass


class ModelError(EdgeFarmError):
    pass


def one_line(exc: BaseException) -> str:
    """The last line of an exception (unwrapping Ray's task errors), short enough to store."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]

"""Where EdgeFarm keeps its files on the operator's machine: $EDGEFARM_HOME, else ./.edgefarm."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def workspace() -> Path:
    return Path(os.environ.get("EDGEFARM_HOME", ".edgefarm")).resolve()


def cache_dir() -> Path:
    return workspace() / "cache"


def paddle_python() -> Path | None:
    """The interpreter with the Paddle tools (x2paddle, paddlepaddle, Paddle Lite), whose wheels
    stop at Python 3.10: $EDGEFARM_PADDLE_PYTHON, else ``.venv-paddle`` beside the controller's
    own virtual environment (scripts/setup.sh makes it), else None."""
    given = os.environ.get("EDGEFARM_PADDLE_PYTHON")
    if given:
        return Path(given)
    beside = Path(sys.prefix).parent / ".venv-paddle" / "bin" / "python"
    return beside if beside.is_file() else None

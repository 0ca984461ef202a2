"""Where EdgeFarm keeps its files on the operator's machine: $EDGEFARM_HOME, else ./.edgefarm."""

from __future__ import annotations

import os
from pathlib import Path


def workspace() -> Path:
    return Path(os.environ.get("EDGEFARM_HOME", ".edgefarm")).resolve()


def cache_dir() -> Path:
    return workspace() / "cache"

"""A command that hangs and leaves a child behind: what a timeout must kill, whole."""

from __future__ import annotations

import sys
from pathlib import Path


def hung_command(folder: Path) -> tuple[list[str], Path]:
    """argv of a parent that sleeps 60 s after starting a child; the child writes the returned
    marker file after 3 s unless it was killed with its parent."""
    marker = folder / "child-survived"
    child = folder / "child.py"
    child.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    parent = folder / "parent.py"
    parent.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(60)\n")
    return [sys.executable, str(parent)], marker

"""The three top-level packages EdgeFarm installs come from one installation, or the CLI says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controller.cli import check_installation
from tests.conftest import ROOT


def test_this_checkout_is_one_installation() -> None:
    check_installation()  # raises UserError otherwise


def test_another_package_named_agent_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__init__.py").write_text("")  # someone else's `agent`, first on the path
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "controller.cli", "select", "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"edgefarm: error: the package 'agent' is imported from {tmp_path}, not from")
    assert str(ROOT) in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "x.db").exists()  # stopped before anything was touched

"""What lets the agent run on any board: Python 3.8 syntax, lazy engine imports, no controller."""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from controller.boards.agent_bundle import agent_source_dir, build_agent_bundle

AGENT_FILES: List[Path] = sorted(agent_source_dir().rglob("*.py"))


def test_there_are_agent_sources() -> None:
    names = {p.relative_to(agent_source_dir()).as_posix() for p in AGENT_FILES}
    assert {"__main__.py", "job.py", "measure.py", "engines/__init__.py", "engines/openvino.py"} <= names


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.relative_to(agent_source_dir()).as_posix())
def test_every_agent_module_parses_as_python_3_8(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        assert not any(m == "controller" or m.startswith("controller.") for m in modules), path


def test_importing_the_agent_imports_no_engine_library(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import agent.__main__, agent.job, agent.engines, agent.dataset, agent.measure\n"
        "agent.engines.engine_class('onnxruntime'); agent.engines.engine_class('openvino')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnxruntime', 'openvino', 'controller'))))\n"
    )
    bundle = build_agent_bundle(tmp_path)
    proc = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r)\n%s" % (str(bundle), code)],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def _python38() -> str:
    """A Python 3.8: on PATH, or among pyenv's versions (whose shim needs a pyenv global)."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.8.*", "bin", "python3.8")))
    exe = found[-1] if found else shutil.which("python3.8")
    if exe is None:
        pytest.skip("no python3.8 on this machine")
    proc = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                          capture_output=True, text=True, timeout=60)
    if proc.stdout.strip() != "True":
        pytest.skip("python3.8 does not run here: %s" % proc.stderr.strip()[-200:])
    return exe


def test_a_real_python_3_8_compiles_the_agent_and_runs_its_stdlib_parts(tmp_path: Path) -> None:
    exe = _python38()
    bundle = build_agent_bundle(tmp_path)
    # compile() in memory: py_compile would leave 3.8 .pyc files in the source tree
    compile_all = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\n"
    proc = subprocess.run([exe, "-c", compile_all] + [str(p) for p in AGENT_FILES],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The fingerprint and the command line are standard library only: run them for real.
    proc = subprocess.run([exe, "-I", "-c", "import sys, json; sys.path.insert(0, %r)\n"
                           "from agent.fingerprint import collect; print(json.dumps(collect()))" % str(bundle)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["python"].startswith("3.8.")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"protocol": 0, "job_id": "old"}))
    proc = subprocess.run([exe, "-I", str(bundle), "run", "job.json", "--out", "result.json"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["failure"]["stage"] == "agent"
    assert result["job_id"] == "old"

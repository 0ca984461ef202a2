"""The agent zipapp: deterministic, hash-named, reused, and runnable on its own."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from agent.protocol import sha256_file
from controller.boards.agent_bundle import agent_source_dir, build_agent_bundle


def test_the_bundle_is_deterministic_and_named_by_its_hash(tmp_path: Path) -> None:
    first = build_agent_bundle(tmp_path / "a")
    second = build_agent_bundle(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert sha256_file(str(first)) == digest
    assert first.name == "agent-%s.pyz" % digest[:16]


def test_an_existing_bundle_is_reused_and_a_damaged_one_rewritten(tmp_path: Path) -> None:
    path = build_agent_bundle(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert build_agent_bundle(tmp_path) == path and path.stat().st_mtime_ns == stamp
    good = path.read_bytes()
    path.write_bytes(b"damaged")
    assert build_agent_bundle(tmp_path) == path and path.read_bytes() == good


def test_the_bundle_holds_only_the_agent_sources(tmp_path: Path) -> None:
    path = build_agent_bundle(tmp_path)
    source = agent_source_dir()
    expected = {"agent/" + p.relative_to(source).as_posix() for p in source.rglob("*.py")
                if "__pycache__" not in p.parts}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert set(names) == expected | {"__main__.py"}
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert zf.read("agent/job.py") == (source / "job.py").read_bytes()


def test_probe_through_the_bundle_lists_both_engines(tmp_path: Path) -> None:
    path = build_agent_bundle(tmp_path)
    # -I: isolated, so only the zip (not this checkout) can provide the agent package
    proc = subprocess.run([sys.executable, "-I", str(path), "probe"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["protocol"] == 1
    for name in ("onnxruntime", "openvino"):
        assert report["engines"][name]["available"] is True
        assert report["engines"][name]["version"]
    assert report["fingerprint"]["python"] == "%d.%d.%d" % sys.version_info[:3]

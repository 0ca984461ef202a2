"""`edgefarm boards`: the real agent probes each board; an unreachable one says why."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import openvino
import pytest
import yaml

from controller.boards.status import probe_boards
from controller.cli import main


def test_local_board_reports_engines_and_fingerprint(edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("local  chip=x86_64 ") or out.startswith("local  chip=aarch64 ")
    assert "reachable" in out and "UNREACHABLE" not in out
    assert f"engine onnxruntime: {onnxruntime.__version__}" in out
    assert f"engine openvino: {openvino.get_version().split('-')[0]}" in out
    import re
    import shutil

    free = re.search(r"disk free=([0-9.]+) GB", out)
    assert free and abs(float(free.group(1)) - shutil.disk_usage(edgefarm_home).free / 1e9) < 1.0


def test_unreachable_board_is_listed_with_the_reason(tmp_path: Path, edgefarm_home: Path) -> None:
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [
        {"name": "local"},
        {"name": "broken", "chip": "rk3399", "python": str(tmp_path / "no-such-python")},
    ]}))
    rows = {r["name"]: r for r in probe_boards(inventory)}
    assert rows["local"]["reachable"] and rows["local"]["engines"]["onnxruntime"]["available"]
    assert not rows["broken"]["reachable"]
    assert "no-such-python" in rows["broken"]["why"] and rows["broken"]["chip"] == "rk3399"


def test_listing_boards_leaves_no_database_behind(tmp_path: Path, edgefarm_home: Path) -> None:
    db = tmp_path / "never.db"
    assert main(["boards", "--db", f"sqlite:///{db}"]) == 0
    assert not db.exists()


def test_a_chip_that_contradicts_the_board_is_a_warning(tmp_path: Path, edgefarm_home: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    wrong = "rk3399" if platform.machine() in ("x86_64", "AMD64") else "EPYC 7B13"
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "local"}, {"name": "mislabelled", "chip": wrong}]}))
    assert main(["boards", "--inventory", str(inventory)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"chip {wrong!r} declares" in warnings[0]
    assert f"but the board reports {platform.machine()}" in warnings[0]
    assert out.index("mislabelled") < out.index("WARNING")  # under the board it is about

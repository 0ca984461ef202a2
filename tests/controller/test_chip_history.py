"""Stored history keeps its chip: a later run that declares a board as another chip (a typo, a
rename) files its own jobs under the new name and leaves every earlier result where it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.results.database import open_db
from controller.results.queries import boards, run_jobs
from tests.models import digits_mlp
from tests.refusal import real_database

OLD_CHIP = "x86_64 AMD EPYC 7B13"  # what the release's database filed its local board under
TYPO = "x86_64 AMD EPYK 7B13"


def _selection(url: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["select", "--format", "json", "--db", url]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_run_with_a_mistyped_chip_does_not_move_stored_history(tmp_path: Path, edgefarm_home: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{real_database(tmp_path)}"
    before = _selection(url, capsys)
    assert {row["chip"] for row in before} == {OLD_CHIP}
    with open_db(url)() as db:
        old_jobs = {run: run_jobs(db, run) for run in (1, 2)}

    inventory = tmp_path / "lab.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "local", "chip": TYPO, "workdir": str(tmp_path / "b")}]}))
    model = tmp_path / "digits.onnx"
    digits_mlp(model)
    assert main(["run", "--model", str(model), "--variants", "fp32", "--engines", "onnxruntime",
                 "--inventory", str(inventory), "--db", url]) == 0

    after = _selection(url, capsys)
    assert [row for row in after if row["model"] != "digits"] == before  # every stored pick, figure for figure
    (new,) = [row for row in after if row["model"] == "digits"]
    assert (new["chip"], new["board"]) == (TYPO, "local")
    with open_db(url)() as db:
        assert {run: run_jobs(db, run) for run in (1, 2)} == old_jobs  # the dashboard's job tables too
        assert {b.name: b.chip for b in boards(db)}["local"] == TYPO  # the board is declared so now


def test_a_run_on_a_board_declared_as_another_architecture_warns(tmp_path: Path, edgefarm_home: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    wrong = "rk3399" if platform.machine() in ("x86_64", "AMD64") else "EPYC 7B13"
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "local", "chip": wrong, "workdir": str(tmp_path / "b")}]}))
    model = tmp_path / "digits.onnx"
    digits_mlp(model)
    assert main(["run", "--model", str(model), "--variants", "fp32", "--engines", "onnxruntime",
                 "--inventory", str(inventory), "--db", f"sqlite:///{tmp_path / 'e.db'}"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"edgefarm: warning: board local: chip {wrong!r} declares")

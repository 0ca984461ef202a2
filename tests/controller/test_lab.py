"""The whole farm on this machine: the example spec's jobs spread over the local board, two SSH
test boards with different settings and the ADB test device, all results in the database and
one selection row per chip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.results.database import open_db
from controller.results.store import Job
from tests.adbboard import adb_board
from tests.conftest import ROOT, small_ppocr_spec
from tests.net import free_port
from tests.sshboard import netns_refusal, ssh_board

pytestmark = pytest.mark.slow


def test_the_example_spec_runs_over_local_ssh_and_adb_boards(
        tmp_path: Path, edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    why = netns_refusal() or (None if shutil.which("adb") else "adb missing (scripts/setup.sh installs it)")
    if why:
        pytest.skip(why)
    adb_port = free_port()
    with ssh_board("lab-a", 71) as a, ssh_board("lab-b", 72) as b, adb_board("lab-phone", 73) as phone:
        try:
            inventory = tmp_path / "inventory.yaml"
            inventory.write_text(yaml.safe_dump({"boards": [
                {"name": "local"},
                a.inventory_entry(chip="sim-jetson", python=sys.executable, workdir=str(tmp_path / "a")),
                # The second SSH board: another interpreter (Python 3.10), pinned to one core.
                b.inventory_entry(chip="sim-rk3399", python=str(ROOT / ".venv-board" / "bin" / "python"),
                                  workdir=str(tmp_path / "b"), cpus=[0]),
                {"name": "lab-phone", "chip": "sim-phone", "transport": "adb", "python": sys.executable,
                 "workdir": str(tmp_path / "phone"), "adb": {"serial": phone.serial, "server_port": adb_port}},
            ]}))
            spec = small_ppocr_spec(tmp_path, name="lab", batch_sizes=[1])
            data = yaml.safe_load(spec.read_text())
            data["variants"], data["engines"] = ["fp32", "int8"], ["onnxruntime"]
            data["boards"] = ["local", "lab-a", "lab-b", "lab-phone"]
            spec.write_text(yaml.safe_dump(data))
            url = f"sqlite:///{tmp_path / 'lab.db'}"

            assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
            assert "skipped" not in capsys.readouterr().out
        finally:
            subprocess.run(["adb", "-P", str(adb_port), "kill-server"], capture_output=True, timeout=30)

    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        per_board: dict[str, list[Job]] = {}
        for job in jobs:
            per_board.setdefault(job.board.name, []).append(job)
        pythons = {name: {j.result.fingerprint["python"][:4] for j in js} for name, js in per_board.items()}
        pinned = {j.result.raw["board_state"]["cpus"] == [0] for j in per_board["lab-b"]}
        failures = [(j.board.name, j.label, j.message) for j in jobs if j.status != "ok"]
    assert not failures
    assert {name: len(js) for name, js in per_board.items()} == {n: 3 * 2 for n in ("local", "lab-a", "lab-b", "lab-phone")}
    assert pythons["lab-b"] == {"3.10"} and pythons["lab-phone"] == {sys.version[:4]} and pinned == {True}

    assert main(["select", "--db", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    chips = {r["chip"] for r in rows}
    assert {"sim-jetson", "sim-rk3399", "sim-phone"} < chips and len(chips) == 4
    assert sorted((r["model"], r["chip"]) for r in rows) == sorted({(r["model"], r["chip"]) for r in rows})
    assert len(rows) == 3 * 4  # one row per chip for each of the three models

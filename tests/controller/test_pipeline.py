"""Jobs start as soon as their own conversion has landed (controller.run.schedule), except on a
board that measures on the cores converting: a real run on an SSH board and the local board, with
nine conversions made from a cold cache while they measure.

When a conversion landed is when its cache entry was written (its sidecar, written last, before
its jobs may go); when a job started is the board's own clock, the same machine's.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.results.database import open_db
from controller.results.store import Job
from tests.models import digits_mlp
from tests.sshboard import netns_refusal, ssh_board

pytestmark = pytest.mark.slow

CONVERTED = ("openvino", "mnn", "ncnn")


def test_the_ssh_board_measures_while_conversions_run_and_the_local_board_waits_for_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if why := netns_refusal():
        pytest.skip(why)
    monkeypatch.setenv("EDGEFARM_HOME", str(tmp_path / "home"))  # a cold cache: every conversion is made
    digits_mlp(tmp_path / "digits.onnx")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pipeline",
        "boards": ["local", "pipessh"],
        "models": [{"name": "digits", "path": str(tmp_path / "digits.onnx"), "dataset": {"kind": "seeded", "samples": 32}}],
        "variants": ["fp32", "fp16", "int8"],
        "engines": ["onnxruntime", *CONVERTED],
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.1, "max_seconds": 5, "batch_sizes": [1],
                    "throughput_seconds": 0.1, "precision": None, "e2e": False, "slower_factor": None},
        "selection": {"rounds": 0},
    }))
    url = f"sqlite:///{tmp_path / 'edgefarm.db'}"
    with ssh_board("pipessh", 93) as board:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({"boards": [
            {"name": "local"}, board.inventory_entry(python=sys.executable, workdir=str(tmp_path / "board"))]}))
        assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
    sidecars = list((tmp_path / "home" / "cache" / "conversions").glob("*.json"))
    assert len(sidecars) == 3 * len(CONVERTED)  # both boards are x86: one conversion each, shared
    landed = [datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).replace(tzinfo=None) for p in sidecars]
    with open_db(url)() as db:
        jobs = db.scalars(select(Job)).all()
        assert all(j.status == "ok" for j in jobs), [(j.engine, j.label, j.message) for j in jobs if j.status != "ok"]
        starts = {board: sorted(j.started_at for j in jobs if j.board.name == board) for board in ("local", "pipessh")}
        # Each converted job's row names what its conversion made, written when it landed.
        assert all(j.artifact and j.artifact["conversion"]["seconds"] > 0 for j in jobs if j.engine in CONVERTED)
    assert len(starts["local"]) == len(starts["pipessh"]) >= 3 * (1 + len(CONVERTED))  # (and OpenVINO's own default)
    # The SSH board measures on its own cores: its first job did not wait for the conversions.
    assert starts["pipessh"][0] < max(landed), (starts["pipessh"][0], sorted(landed))
    # The local board measures on the cores converting: it began once the last conversion had landed.
    assert starts["local"][0] >= max(landed), (starts["local"][0], sorted(landed))

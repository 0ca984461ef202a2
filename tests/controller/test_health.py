"""Health checks: the golden job on a real board, and quarantine of a board that keeps failing."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import yaml
from onnx import numpy_helper
from sqlalchemy import select

from agent.protocol import sha256_file
from controller.boards.agent_bundle import build_agent_bundle
from controller.boards.health import engine_for, golden
from controller.boards.session import BoardSession
from controller.build.cache import Cache
from controller.cli import main
from controller.config.inventory import BoardSpec
from controller.results import queries
from controller.results.database import open_db
from controller.results.store import Board as BoardRow
from controller.results.store import Job
from dashboard.views import boards_frame
from tests.conftest import small_ppocr_spec


def _session(tmp_path: Path) -> BoardSession:
    return BoardSession(BoardSpec(name="local", workdir=str(tmp_path / "board")), build_agent_bundle(tmp_path / "agent"))


def test_the_golden_job_passes_on_a_sound_board_and_catches_wrong_numbers(tmp_path: Path) -> None:
    gold = golden(Cache(tmp_path / "cache"))
    session = _session(tmp_path)
    try:
        probe = session.start()
        engine = engine_for(probe, None)
        assert engine == "onnxruntime"
        assert session.health_check(gold.files(), engine) is None

        # A model whose weights rotted gives outputs that disagree with the reference.
        proto = onnx.load(str(gold.model))
        weight = numpy_helper.to_array(proto.graph.initializer[0])
        proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(-weight, proto.graph.initializer[0].name))
        bad = tmp_path / "rotten.onnx"
        onnx.save(proto, str(bad))
        files = gold.files()
        files["model"] = (bad, sha256_file(str(bad)))
        problem = session.health_check(files, engine)
        assert problem is not None and "computed wrong outputs" in problem

        # An engine the board cannot load fails the check with the stage it failed at.
        assert "golden job failed at load" in session.health_check(gold.files(), "no-such-engine")
        # A board without an engine for the golden model is judged by its probe alone.
        assert engine_for(probe, ["paddlelite"]) is None and session.health_check(files, None) is None
    finally:
        session.close()


@pytest.mark.slow
def test_a_board_failing_its_health_check_is_quarantined_shown_and_released(
        tmp_path: Path, edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "inventory.yaml"
    # "sick" has an interpreter that exits 1 at once: it can never start the agent.
    inventory.write_text(yaml.safe_dump({"boards": [
        {"name": "local"},
        {"name": "sick", "python": "/bin/false", "workdir": str(tmp_path / "sick"), "quarantine_after": 2},
    ]}))
    spec = small_ppocr_spec(tmp_path, name="health", min_seconds=0.1, batch_sizes=[1])
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32"], ["onnxruntime"], ["local", "sick"]
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'health.db'}"
    run = ["run", str(spec), "--inventory", str(inventory), "--db", url]

    assert main(run) == 0
    out = capsys.readouterr().out
    assert "board sick skipped: unreachable: " in out and "quarantined" not in out
    assert main(run) == 0
    assert "quarantined after 2 failed checks in a row" in capsys.readouterr().out
    assert main(run) == 0  # now it is not even contacted
    assert "board sick skipped: quarantined since " in capsys.readouterr().out

    with open_db(url)() as db:
        sick = db.scalars(select(BoardRow).filter_by(name="sick")).one()
        assert sick.quarantined_at is not None and sick.health_failures == 2
        assert {j.board.name for j in db.scalars(select(Job))} == {"local"}  # 3 runs, all on local
        shown = boards_frame(queries.boards(db)).set_index("board")["quarantine"]  # the dashboard's table
    assert shown["sick"].startswith("since ") and "2 failed health checks" in shown["sick"]
    assert shown.isna()["local"]

    assert main(["boards", "--inventory", str(inventory), "--db", url]) == 0
    listing = capsys.readouterr().out
    assert "sick  chip=auto  transport=local  QUARANTINED since " in listing
    assert "2 failed health checks in a row" in listing

    assert main(["boards", "--release", "sick", "--db", url]) == 0
    assert "released" in capsys.readouterr().out
    assert main(["boards", "--inventory", str(inventory), "--db", url]) == 0
    assert "QUARANTINED" not in capsys.readouterr().out
    assert main(["boards", "--release", "sick", "--db", url]) == 2
    assert "is not in quarantine" in capsys.readouterr().err


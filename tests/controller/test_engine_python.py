"""A board can run one engine's jobs in another interpreter (engine_python), as Paddle Lite needs."""

from __future__ import annotations

import sys
from pathlib import Path

from controller.boards.agent_bundle import build_agent_bundle
from controller.boards.health import golden, golden_job
from controller.boards.session import BoardSession
from controller.build.cache import Cache
from controller.config.inventory import BoardSpec
from tests.conftest import ROOT

BOARD_PYTHON = ROOT / ".venv-board" / "bin" / "python"


def test_one_engine_runs_in_its_own_interpreter(tmp_path: Path) -> None:
    assert BOARD_PYTHON.is_file(), "scripts/setup.sh makes .venv-board"
    board = BoardSpec(name="local", workdir=str(tmp_path / "board"),
                  engine_python={"onnxruntime": str(BOARD_PYTHON), "openvino": str(tmp_path / "no-such-python")})
    session = BoardSession(board, build_agent_bundle(tmp_path / "agent"))
    try:
        probe = session.start()
        ort = probe["engines"]["onnxruntime"]
        assert ort["available"] and ort["python"] == str(BOARD_PYTHON)
        # An interpreter that does not run leaves its engine unavailable, with the reason.
        ov = probe["engines"]["openvino"]
        assert not ov["available"] and "no-such-python" in ov["reason"]

        model = golden(Cache(tmp_path / "cache"))
        result = session.run_job(golden_job("local", "onnxruntime"), model.files(), 120)
        assert result["status"] == "ok", result.get("failure")
        board_version = result["fingerprint"]["python"]
        assert board_version[:4] != sys.version[:4]  # the board venv's Python, not ours
    finally:
        session.close()

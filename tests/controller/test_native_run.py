"""Jobs measured by an engine's own benchmark tool instead of the agent: OpenVINO's real
benchmark_app, on the local board and on the ADB test device treated as a board without
Python (no agent pushed; shell commands and the tool only)."""

from __future__ import annotations

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
from tests.conftest import small_ppocr_spec
from tests.net import free_port

pytestmark = pytest.mark.slow
BENCHMARK_APP = str(Path(sys.executable).parent / "benchmark_app")


def _spec(tmp_path: Path, boards: list[str]) -> Path:
    spec = small_ppocr_spec(tmp_path, name="native", batch_sizes=[1])
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32"], ["onnxruntime", "openvino"], boards
    spec.write_text(yaml.safe_dump(data))
    return spec


def _jobs(url: str) -> list[tuple[str, str, str, str, dict]]:
    with open_db(url)() as db:
        return sorted((j.board.name, j.engine, j.label, j.status, j.result.raw if j.result else {"message": j.message})
                      for j in db.scalars(select(Job)))


def test_a_native_tool_measures_its_engine_beside_the_agent(tmp_path: Path, edgefarm_home: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{
        "name": "ov-native", "workdir": str(tmp_path / "board"),
        "native": {"openvino": {"tool": "benchmark_app", "binary": BENCHMARK_APP}}}]}))
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert main(["run", str(_spec(tmp_path, ["ov-native"])), "--inventory", str(inventory), "--db", url]) == 0
    jobs = _jobs(url)
    # The tool is asked for f32 explicitly (no probe tells the device's own default here).
    assert [(b, e, label, status) for b, e, label, status, _ in jobs] == [
        ("ov-native", "onnxruntime", "fp32", "ok"), ("ov-native", "openvino", "fp32", "ok")]
    agent_raw, native_f32 = (raw for *_, raw in jobs)
    assert agent_raw["latency_source"] == "agent" and agent_raw["accuracy"] is not None
    assert native_f32["native"]["tool"] == "benchmark_app" and native_f32["latency_source"] == "benchmark_app summary"
    assert native_f32["engine"]["precision"] == "fp32" and native_f32["accuracy"] is None
    # The tool was pushed into the board's cache by hash, beside the model, and nothing else was left.
    assert len(list((tmp_path / "board" / "cache").iterdir())) >= 2


def test_a_board_without_python_is_probed_by_shell_and_measured_by_its_tool(
        tmp_path: Path, edgefarm_home: Path) -> None:
    from tests.adbboard import adb_board
    from tests.netns import namespaces_refused

    why = namespaces_refused() or (None if shutil.which("adb") else "adb missing (scripts/setup.sh installs it)")
    if why:
        pytest.skip(why)
    port = free_port()
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with adb_board("nopython", 74) as phone:
        try:
            inventory = tmp_path / "inventory.yaml"
            inventory.write_text(yaml.safe_dump({"boards": [{
                "name": "phone", "chip": "sim-phone", "transport": "adb", "agent": False, "cpus": [1],
                "workdir": str(tmp_path / "phone"), "adb": {"serial": phone.serial, "server_port": port},
                "native": {"openvino": {"tool": "benchmark_app", "binary": BENCHMARK_APP}}}]}))
            assert main(["run", str(_spec(tmp_path, ["phone"])), "--inventory", str(inventory), "--db", url]) == 0
        finally:
            subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)
    jobs = _jobs(url)
    statuses = {(e, label): (status, raw.get("message") or raw.get("failure")) for _, e, label, status, raw in jobs}
    assert statuses[("openvino", "fp32")][0] == "ok", statuses
    # ONNX Runtime needs the agent, which this board cannot run.
    assert statuses[("onnxruntime", "fp32")][0] == "failed"
    assert not (tmp_path / "phone" / "agent").exists()  # no agent was ever pushed
    with open_db(url)() as db:
        job = db.scalars(select(Job).filter_by(engine="openvino", label="fp32")).one()
        assert job.result.fingerprint["arch"] == "x86_64" and job.result.fingerprint["python"] is None
        assert job.board.chip == "sim-phone"

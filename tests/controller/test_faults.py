"""Faults a run must survive, each done for real to SSH test boards while a job runs on them.

Two boards in their own network namespaces: ``flaky`` (the one that misbehaves) and
``steady`` (Python 3.10 from .venv-board, pinned to one core: the second board with
different settings). Every test checks that nothing measured elsewhere is lost.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.results.database import open_db
from controller.results.store import Job
from tests.conftest import ROOT, small_ppocr_spec
from tests.faults import clear_impairment, impair, kill_matching, namespace_processes, set_link, when_job_runs
from tests.sshboard import SshBoard, netns_refusal, ssh_board

pytestmark = pytest.mark.slow
BOARD_PYTHON = ROOT / ".venv-board" / "bin" / "python"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SshBoard]]:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    assert BOARD_PYTHON.is_file(), "scripts/setup.sh makes .venv-board (Python 3.10) for the test boards"
    with ssh_board("flaky", 61) as flaky, ssh_board("steady", 62) as steady:
        yield {"flaky": flaky, "steady": steady}


def _setup(tmp: Path, lab: dict[str, SshBoard], min_seconds: float = 4.0, retries: int = 1) -> tuple[Path, Path, str]:
    """Spec (one model, one job per board, long enough to be hit mid-job), inventory, DB URL."""
    flaky, steady = lab["flaky"], lab["steady"]
    inventory = tmp / "inventory.yaml"
    flaky_entry = flaky.inventory_entry(chip="flaky-chip", python=sys.executable, workdir=str(tmp / "flaky"),
                                        retries=retries)
    flaky_entry["ssh"].update(dead_after=3, connect_timeout=3)
    inventory.write_text(yaml.safe_dump({"boards": [
        flaky_entry,
        steady.inventory_entry(chip="steady-chip", python=str(BOARD_PYTHON), workdir=str(tmp / "steady"), cpus=[1]),
    ]}))
    spec = small_ppocr_spec(tmp, name="faults", min_seconds=min_seconds, batch_sizes=[1])
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32"], ["onnxruntime"], ["flaky", "steady"]
    spec.write_text(yaml.safe_dump(data))
    return spec, inventory, f"sqlite:///{tmp / 'faults.db'}"


def _jobs(url: str) -> dict[str, Job]:
    with open_db(url)() as db:
        jobs = db.scalars(select(Job)).all()
        for j in jobs:
            _ = j.board, j.result  # loaded while the session is open
        return {j.board.name: j for j in jobs}


def _steady_is_intact(jobs: dict[str, Job]) -> None:
    steady = jobs["steady"]
    assert steady.status == "ok", steady.message
    assert steady.result.fingerprint["python"].startswith("3.10")
    assert steady.result.raw["board_state"]["cpus"] == [1]
    assert steady.result.raw["engine"]["name"] == "onnxruntime"


def test_a_board_lost_for_good_mid_job_is_retried_then_failed_and_the_others_land(
        lab: dict[str, SshBoard], tmp_path: Path, edgefarm_home: Path) -> None:
    spec, inventory, url = _setup(tmp_path, lab)
    flaky = lab["flaky"]
    try:
        with when_job_runs(tmp_path / "flaky", lambda: set_link(flaky.host_veth, "down")) as fired:
            assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
        assert fired, "the link was never cut: no job started on the board"
    finally:
        set_link(flaky.host_veth, "up")
    jobs = _jobs(url)
    lost = jobs["flaky"]
    assert lost.status == "failed" and lost.stage == "transport"
    assert lost.attempts == 2 and "board lost during the job on all 2 attempts" in lost.message
    _steady_is_intact(jobs)


def _run_killing(lab: dict[str, SshBoard], tmp_path: Path, match: Callable[[str], bool]) -> dict[str, Job]:
    """A run during which the flaky board's processes that ``match`` are killed mid-job."""
    spec, inventory, url = _setup(tmp_path, lab)
    with when_job_runs(tmp_path / "flaky", lambda: kill_matching(lab["flaky"].namespace, match)) as killed:
        assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
    assert killed and killed[0], "nothing was killed"
    jobs = _jobs(url)
    _steady_is_intact(jobs)
    return jobs


def test_a_killed_agent_is_retried_and_its_second_attempt_lands(
        lab: dict[str, SshBoard], tmp_path: Path, edgefarm_home: Path) -> None:
    job = _run_killing(lab, tmp_path, lambda cmd: " run job.json " in f"{cmd} ")["flaky"]
    assert job.status == "ok", job.message
    assert job.attempts == 2
    assert "attempt 1: the agent exited" in " ".join(job.result.raw["notes"])


def test_killed_sshd_sessions_are_reconnected_and_the_stale_agent_ended(
        lab: dict[str, SshBoard], tmp_path: Path, edgefarm_home: Path) -> None:
    # The sessions, not the listener: the daemon that accepts new connections stays up.
    job = _run_killing(lab, tmp_path, lambda cmd: cmd.startswith("sshd:") and "[listener]" not in cmd)["flaky"]
    assert job.status == "ok", job.message
    assert job.attempts == 2 and "attempt 1:" in " ".join(job.result.raw["notes"])
    # The first attempt's agent, orphaned by its dead session, is gone, and so is its folder.
    assert not [cmd for cmd in namespace_processes(lab["flaky"].namespace).values() if "run job.json" in cmd]
    assert not any((tmp_path / "flaky" / "jobs").iterdir())


def test_a_run_over_a_slow_and_lossy_link_completes(
        lab: dict[str, SshBoard], tmp_path: Path, edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, inventory, url = _setup(tmp_path, lab, min_seconds=0.5)
    flaky = lab["flaky"]
    board_veth = flaky.host_veth.replace("efh", "efb")
    how = impair(flaky.namespace, board_veth, flaky.host_veth, delay_ms=100, loss_pct=5)
    try:
        assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
    finally:
        clear_impairment(flaky.namespace, board_veth, flaky.host_veth)
    jobs = _jobs(url)
    assert jobs["flaky"].status == "ok", f"{how}: {jobs['flaky'].message}"
    assert jobs["flaky"].attempts == 1
    _steady_is_intact(jobs)
    with capsys.disabled():
        print(f"\nslow and lossy link: {how}")

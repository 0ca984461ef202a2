"""A farm over two Ray nodes that share nothing but Ray.

The board host is a network namespace of its own with a mount namespace of its own: ``edgefarm
worker`` runs there, where the driver's files (its workspace, cache, spec and database: pytest's
whole temporary folder) are covered by an empty tmpfs. Its SSH test board sits in a third
namespace, joined to the host's namespace by its own veth pair: this machine's root namespace,
where the driver and the Ray head run, has no route to it. The local board runs on the driver's
node at the same time. Whatever the remote board's jobs need reaches the host through Ray
(``controller.run.depot``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from controller.errors import UserError
from controller.results.database import open_db
from controller.results.store import Job, Run
from tests.conftest import ROOT, small_ppocr_spec
from tests.netns import BoardNet, board_net, route_verdict
from tests.raycluster import CLI, ENV, ray_head, start_worker
from tests.sshboard import SshBoard, netns_refusal, ssh_board

BOARD_PYTHON = ROOT / ".venv-board" / "bin" / "python"
HOST = "labw"


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    address: str  # the Ray head, on this machine's side of the host's veth
    host_net: BoardNet  # the board host's namespace
    board: SshBoard  # reachable from the host's namespace only
    hidden: Path  # the driver's files, covered by an empty tmpfs on the host
    worker_home: Path  # EDGEFARM_HOME of the worker
    inventory: Path
    worker: subprocess.Popen[Any] | None = None

    def start_worker(self) -> None:
        """``edgefarm worker`` in the host's network namespace, in a mount namespace of its own."""
        hide = 'mount -t tmpfs edgefarm-hidden "$0" && exec "$@"'
        self.worker = start_worker(
            ["ip", "netns", "exec", self.host_net.namespace, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", hide, str(self.hidden), *CLI, "worker", "--address", self.address, "--host", HOST,
             "--inventory", str(self.inventory), "--resources", '{"CPU": 1}'],
            self.worker_home, self.worker_home / "worker.log")

    def ensure_worker(self) -> None:
        if self.worker is None:
            self.start_worker()

    def kill_host(self) -> None:
        """Every process of the board host dies at once: its worker, Ray node and the board's actor."""
        pids = _sh("ip", "netns", "pids", self.host_net.namespace).split()
        if pids:
            subprocess.run(["kill", "-KILL", *pids], capture_output=True)
        if self.worker is not None:
            self.worker.wait(timeout=30)
            self.worker = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, edgefarm_home: Path) -> Iterator[Lab]:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    assert BOARD_PYTHON.is_file(), "scripts/setup.sh makes .venv-board (Python 3.10) for the test boards"
    worker_home = Path(tempfile.mkdtemp(prefix="edgefarm-hostw-"))  # outside pytest's folder, which is hidden
    try:
        with board_net("hostw", 55, "10.231") as host_net, ssh_board("hostwb", 56) as board:
            # The board's link moves into the host's namespace: from here on only the host reaches it.
            _sh("ip", "link", "set", board.host_veth, "netns", host_net.namespace)
            gateway = board.host.rsplit(".", 1)[0] + ".1"
            _sh("ip", "netns", "exec", host_net.namespace, "ip", "addr", "add", f"{gateway}/24", "dev", board.host_veth)
            _sh("ip", "netns", "exec", host_net.namespace, "ip", "link", "set", board.host_veth, "up")
            inventory = worker_home / "inventory.yaml"
            inventory.write_text(yaml.safe_dump({"boards": [
                {"name": "here"},
                {**board.inventory_entry(host=HOST, python=str(BOARD_PYTHON), workdir=str(worker_home / "board")),
                 "name": "remote"},
            ]}))
            with ray_head(host_net.host_ip, edgefarm_home) as address:
                found = Lab(address, host_net, board, tmp_path_factory.getbasetemp(), worker_home, inventory)
                try:
                    yield found  # with no worker yet: each test starts the one it needs
                finally:
                    found.kill_host()
    finally:
        shutil.rmtree(worker_home, ignore_errors=True)


def _spec(tmp: Path, name: str, **measure: object) -> Path:
    spec = small_ppocr_spec(tmp, name=name, batch_sizes=[1], **measure)
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32", "fp16"], ["onnxruntime"], ["here", "remote"]
    data["selection"] = {**data.get("selection", {}), "rounds": 0}
    spec.write_text(yaml.safe_dump(data))
    return spec


def _run(lab: Lab, *args: str, home: Path, inventory: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "run", *args, "--inventory", str(inventory or lab.inventory), "--ray-address", lab.address],
                            cwd=ROOT, env=dict(ENV, EDGEFARM_HOME=str(home)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _jobs(url: str) -> list[Job]:
    sessions = open_db(url, create=False)
    try:
        with sessions() as db:
            jobs = db.scalars(select(Job).where(Job.purpose == "measure").order_by(Job.id)).all()
            for j in jobs:
                _ = j.board, j.result, j.variant
            return list(jobs)
    finally:
        # No connection kept between polls: one opened while the run was still making the file
        # (before it was switched to WAL) would read the run's later writes through stale state.
        sessions.kw["bind"].dispose()


def _during(proc: subprocess.Popen[str], url: str, ready: Callable[[list[Job]], bool], what: str,
            act: Callable[[], None]) -> tuple[str, str]:
    """Once ``ready`` holds for the jobs stored while the run ``proc`` goes on, ``act``; then the
    run's output, when it has ended."""
    try:
        deadline = time.monotonic() + 600
        while not ready(_stored_yet(url)):
            assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"not in time: {what}"
            time.sleep(0.3)
        act()
        return proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()


def _stored_yet(url: str) -> list[Job]:
    """The run's jobs so far; none while the run is still making its database."""
    try:
        return _jobs(url)
    except UserError:  # not there yet, or caught half-made
        return []


@pytest.mark.slow
def test_a_worker_that_joins_a_running_run_is_given_its_boards_jobs(lab: Lab, tmp_path: Path, edgefarm_home: Path) -> None:
    # The run starts with no worker for the remote board's host (the first of this module's tests,
    # it finds none; else it waits until Ray knows the one there was is gone).
    lab.kill_host()
    deadline = time.monotonic() + 120
    cluster = [*CLI, "cluster", "--ray-address", lab.address, "--inventory", str(lab.inventory), "--format", "json"]
    while any(n["alive"] and n["host"] == HOST for n in json.loads(subprocess.run(
            cluster, check=True, capture_output=True, text=True, cwd=ROOT, env=ENV).stdout)["nodes"]):
        assert time.monotonic() < deadline, "Ray still shows the killed host's node alive"
        time.sleep(2)
    url = f"sqlite:///{tmp_path / 'late.db'}"
    # The local board's jobs last about a minute (it pauses 30 s before each): the run is still going
    # when the worker has joined. The remote board's are short.
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["boards"][0]["cooldown_s"] = 30.0
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    proc = _run(lab, str(_spec(tmp_path, "late", min_seconds=1.0)), "--db", url, home=edgefarm_home,
                inventory=tmp_path / "inventory.yaml")
    # Once the run's rows are written (it is measuring), the host's worker starts.
    out, err = _during(proc, url, lambda jobs: bool(jobs), "the run measured", lab.start_worker)
    assert proc.returncode == 0, err[-3000:]
    jobs = _jobs(url)
    assert sorted((j.board.name, j.status) for j in jobs) == [("here", "ok")] * 2 + [("remote", "ok")] * 2, err[-3000:]
    assert len({j.run_id for j in jobs}) == 1
    here, remote = ([j for j in jobs if j.board.name == name] for name in ("here", "remote"))
    assert min(r.started_at for r in remote) > min(h.started_at for h in here)  # it came in later
    with open_db(url, create=False)() as db:
        assert db.get(Run, jobs[0].run_id).summary["skipped"] == {}  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_board_reachable_only_from_its_host_runs_there_with_files_that_came_through_ray(
        lab: Lab, tmp_path: Path, edgefarm_home: Path) -> None:
    # What the setting promises: the driver cannot reach the board, and the host cannot see the driver's files.
    verdict = route_verdict(lab.board.host)
    assert "unreachable" in verdict or "No route to host" in verdict, verdict
    lab.ensure_worker()
    assert lab.worker is not None
    assert _sh("nsenter", "-t", str(lab.worker.pid), "-m", "ls", "-A", str(lab.hidden)) == ""
    assert list(lab.hidden.iterdir())  # while this side sees them
    url = f"sqlite:///{tmp_path / 'remote.db'}"

    proc = _run(lab, str(_spec(tmp_path, "remote", min_seconds=1.0)), "--db", url, home=edgefarm_home)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    jobs = _jobs(url)
    assert sorted((j.board.name, j.status) for j in jobs) == [("here", "ok")] * 2 + [("remote", "ok")] * 2, out
    remote = [j for j in jobs if j.board.name == "remote"]
    # Measured on the SSH board (its own Python), with the artifact the host pulled by sha256 from the driver.
    assert all(j.result.fingerprint["python"].startswith("3.10") for j in remote)
    pulled = {p.parent.name for p in (lab.worker_home / "cache" / "host").glob("*/*")}
    assert {j.artifact["sha256"] if j.artifact else j.variant.sha256 for j in remote} <= pulled
    assert list((lab.worker_home / "cache" / "host").glob("*/agent-*.pyz"))
    # The local board measured on the driver's node meanwhile: the two boards' jobs overlap in time.
    here = [j for j in jobs if j.board.name == "here"]
    assert any(h.started_at < r.finished_at and r.started_at < h.finished_at for h in here for r in remote)


@pytest.mark.slow
def test_a_host_lost_mid_run_fails_its_jobs_at_stage_host_and_resume_finishes_them(
        lab: Lab, tmp_path: Path, edgefarm_home: Path) -> None:
    lab.ensure_worker()
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    spec = _spec(tmp_path, "lost", min_seconds=4.0)
    proc = _run(lab, str(spec), "--db", url, home=edgefarm_home)
    out, err = _during(proc, url, lambda jobs: any(j.board.name == "remote" and j.status == "ok" for j in jobs),
                       "the remote board finished a job", lab.kill_host)
    assert proc.returncode == 0, err[-3000:]
    jobs = _jobs(url)
    assert [j.status for j in jobs if j.board.name == "here"] == ["ok", "ok"]  # the other board's results landed
    lost = [j for j in jobs if j.board.name == "remote" and j.status != "ok"]
    assert len(lost) == 1 and lost[0].stage == "host" and "host was lost" in lost[0].message, [
        (j.status, j.stage, j.message) for j in jobs]

    lab.start_worker()  # the host is back
    run_id = jobs[0].run_id
    proc = _run(lab, "--resume", str(run_id), "--db", url, home=edgefarm_home)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "(3 stored before, not run again)" in out
    after = _jobs(url)
    assert [j.id for j in after] == [j.id for j in jobs] and all(j.status == "ok" for j in after)
    assert next(j for j in after if j.id == lost[0].id).stage is None


def test_an_actor_that_is_never_placed_leaves_its_board_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host's node that left between the check and the actor's placement: the board is skipped
    once the start deadline passes, instead of the run waiting for a node that will not come."""
    from controller.config.inventory import BoardSpec
    from controller.run import actors as actors_module
    from controller.run.actors import actor_class, start_boards
    from controller.run.cluster import ensure_ray
    from controller.run.depot import Depot
    from controller.run.hosts import placement

    ensure_ray(None)
    monkeypatch.setattr(actors_module, "START_TIMEOUT_S", 3.0)
    depot = Depot()
    try:
        board = BoardSpec(name="gone", host="nowhere")
        bundle = Path(__file__)  # never pulled: the actor never starts
        actor = actor_class().options(**placement(board)).remote(
            board, depot.ship(bundle, "0" * 64), depot.actor)
        probes, problems = start_boards([board], {"gone": actor}, {})
        assert probes == {} and problems["gone"].startswith("unreachable: its actor did not start within 3 s")
    finally:
        depot.close()

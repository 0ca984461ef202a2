"""Board hosts: a board's actor runs on the Ray node of the host the inventory names for it.

Real Ray nodes on this machine: a head started with ``ray start --head``, as a lab's would be,
and a second node started with ``edgefarm worker --host lab2``. The two nodes' processes are given
different ``EDGEFARM_HOME`` folders, so a local board's work directory (under ``EDGEFARM_HOME``
of the process that runs its actor) says which node ran it. The two nodes share this machine's
files, which the placement does not depend on (tests/controller/test_depot.py moves files over Ray).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from controller.config.inventory import load_inventory
from controller.errors import ConfigError
from controller.results.database import open_db
from controller.results.store import Job, Run
from controller.run.worker import LEAVE_TIMEOUT_S, stop_session
from tests.conftest import small_ppocr_spec
from tests.net import free_port
from tests.raycluster import CLI, ENV, ray_head, start_worker

INVENTORY = {"boards": [
    {"name": "here"},                    # no host: the controller's node
    {"name": "near", "host": "lab2"},    # served by the worker started below
    {"name": "far", "host": "nowhere"},  # no worker advertises this host
    {"name": "later", "host": "lab3"},   # the worker that is stopped with Ctrl-C
]}


# -- without Ray --------------------------------------------------------------------------------

def test_a_host_name_is_checked_where_it_is_written(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"boards": [{"name": "b", "host": "lab 2;rm"}]}))
    with pytest.raises(ConfigError) as err:
        load_inventory(inv)
    assert str(err.value).startswith(f"{inv}: boards.0.host: a host name is 1-63 letters")
    assert "'lab 2;rm'" in str(err.value) and "board 'b'" in str(err.value)
    inv.write_text(yaml.safe_dump({"boards": [{"name": "b", "host": "lab-2.rack_1"}]}))
    assert load_inventory(inv)[0].boards[0].host == "lab-2.rack_1"


@pytest.mark.parametrize(("flags", "says"), [
    (["--address", "127.0.0.1:6379", "--host", "lab 2"], "argument --host: 'lab 2': a host name is"),
    (["--address", "6379", "--host", "lab2"], "argument --address: '6379' is not HOST:PORT"),
    (["--address", "h:6379", "--host", "lab2", "--resources", '{"CPU": -1}'], "CPU: -1 is not an amount"),
    (["--address", "h:6379", "--host", "lab2", "--resources", "{CPU: 1}"], "argument --resources: '{CPU: 1}':"),
])
def test_worker_flags_are_checked(flags: list[str], says: str) -> None:
    proc = subprocess.run([*CLI, "worker", *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert says in proc.stderr


def test_worker_against_an_address_where_no_head_answers_exits_2(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.run([*CLI, "worker", "--address", f"127.0.0.1:{port}", "--host", "lab2"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith(f"edgefarm: error: --address 127.0.0.1:{port}: no Ray head answers there")
    assert proc.stdout == "" and time.monotonic() - started < 60


# -- a head and a worker on this machine ----------------------------------------------------------

class Cluster:
    def __init__(self, address: str, head_home: Path, worker_home: Path, inventory: Path) -> None:
        self.address, self.head_home, self.worker_home, self.inventory = address, head_home, worker_home, inventory

    def nodes(self) -> dict[str, Any]:
        proc = subprocess.run([*CLI, "cluster", "--ray-address", self.address, "--inventory", str(self.inventory),
                               "--format", "json"], capture_output=True, text=True, timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)


def _worker(address: str, host: str, home: Path, inventory: Path, log: Path) -> subprocess.Popen[Any]:
    return start_worker([*CLI, "worker", "--address", address, "--host", host, "--resources", '{"CPU": 1}',
                         "--inventory", str(inventory)], home, log)


def _ray_node_session(worker: subprocess.Popen[Any]) -> int:
    """The session of the worker's Ray node: its `ray start` child leads one of its own, which the
    node's processes (raylet, agents, the actors' workers) stay in."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(worker.pid)], capture_output=True, text=True).stdout
    (child,) = [int(pid) for pid in children.split()]
    return child


def _processes_in_session(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "sid=,pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] == str(sid)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, edgefarm_home: Path) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("hosts")
    inventory = tmp / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    worker_home = tmp / "worker-home"
    with ray_head("127.0.0.1", edgefarm_home) as address:
        worker = _worker(address, "lab2", worker_home, inventory, tmp / "worker.log")
        try:
            yield Cluster(address, edgefarm_home, worker_home, inventory)
        finally:
            stop_session(worker, 60)


@pytest.mark.slow
def test_cluster_lists_nodes_hosts_and_boards(cluster: Cluster) -> None:
    found = cluster.nodes()
    alive = [n for n in found["nodes"] if n["alive"]]
    by_host = {n["host"]: n for n in alive}
    assert set(by_host) == {None, "lab2"}, found
    assert by_host[None]["controller"] and by_host[None]["boards"] == ["here"]
    assert not by_host["lab2"]["controller"] and by_host["lab2"]["boards"] == ["near"]
    assert by_host["lab2"]["cpus"] == 1 and by_host[None]["cpus"] == 2
    assert found["hosts_without_worker"] == {"nowhere": ["far"], "lab3": ["later"]}
    assert found["hosts_with_several_workers"] == {}

    table = subprocess.run([*CLI, "cluster", "--ray-address", cluster.address, "--inventory", str(cluster.inventory)],
                           capture_output=True, text=True, timeout=300, env=ENV).stdout
    lines = table.splitlines()
    assert lines[0].startswith("2 nodes alive")
    assert any(line.split()[2:] == ["alive", "lab2", "1", "near"] for line in lines), table
    assert lines[2].split()[2:] == ["alive", "(controller)", "2", "here"], table  # the controller's node first
    assert "host nowhere has no worker in the cluster: a run skips its boards far" in table


# Many actors, so that a placement left to Ray's own choice would put some of them elsewhere.
PLACED = """
import json, sys
import ray
from controller.config.inventory import BoardSpec
from controller.run.hosts import placement

ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0)
class Where:
    def node(self):
        return ray.get_runtime_context().get_node_id()

boards = [BoardSpec(name=f"b{i}", host=sys.argv[2] if i % 2 else None) for i in range(16)]
actors = [Where.options(**placement(b)).remote() for b in boards]
print(json.dumps([[b.host, ray.get(a.node.remote(), timeout=120)] for b, a in zip(boards, actors)]))
"""


@pytest.mark.slow
def test_an_actor_is_placed_on_its_hosts_node_and_a_hostless_one_on_the_controllers(cluster: Cluster) -> None:
    nodes = [n for n in cluster.nodes()["nodes"] if n["alive"]]
    worker = next(n["node_id"] for n in nodes if n["host"] == "lab2")
    controller = next(n["node_id"] for n in nodes if n["controller"])
    proc = subprocess.run([sys.executable, "-c", PLACED, cluster.address, "lab2"], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    placed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [node for host, node in placed if host] == [worker] * 8
    assert [node for host, node in placed if not host] == [controller] * 8


@pytest.mark.slow
def test_each_board_runs_on_its_hosts_node(cluster: Cluster, tmp_path: Path) -> None:
    spec = small_ppocr_spec(tmp_path, name="hosts")
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32"], ["onnxruntime"], ["here", "near", "far"]
    data["selection"] = {**data.get("selection", {}), "rounds": 0}
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert not list(cluster.worker_home.glob("boards/*/cache/*.onnx"))  # the worker's probe pushed only the agent

    proc = subprocess.run([*CLI, "run", str(spec), "--db", url, "--inventory", str(cluster.inventory),
                           "--ray-address", cluster.address], env=dict(ENV, EDGEFARM_HOME=str(cluster.head_home)),
                          capture_output=True, text=True, timeout=900)

    # The skipped board does not stop the others: exit 0, as when one board of several is unreachable.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "board far skipped: host nowhere has no worker in the cluster" in proc.stdout
    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()
        run = db.scalars(select(Run)).one()
        assert sorted((j.board.name, j.status) for j in jobs) == [("here", "ok"), ("near", "ok")]
        assert (run.summary or {})["skipped"] == {"far": "host nowhere has no worker in the cluster"}
    # A local board's work directory, where the job's model was pushed, is under EDGEFARM_HOME of
    # the node that ran the board's actor.
    assert list(cluster.worker_home.glob("boards/near/cache/*.onnx")) and not (cluster.head_home / "boards" / "near").exists()
    assert list(cluster.head_home.glob("boards/here/cache/*.onnx")) and not (cluster.worker_home / "boards" / "here").exists()
    # and the worker's node fetched the driver's files into its own cache, as a node that is not the driver's
    assert list(cluster.worker_home.glob("cache/host/*/*.onnx"))


@pytest.mark.slow
def test_a_run_whose_every_host_has_no_worker_ran_nothing(cluster: Cluster, tmp_path: Path) -> None:
    spec = small_ppocr_spec(tmp_path, name="nohost")
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"], data["boards"] = ["fp32"], ["onnxruntime"], ["far"]
    spec.write_text(yaml.safe_dump(data))
    proc = subprocess.run([*CLI, "run", str(spec), "--db", f"sqlite:///{tmp_path / 'n.db'}", "--inventory",
                           str(cluster.inventory), "--ray-address", cluster.address],
                          env=dict(ENV, EDGEFARM_HOME=str(cluster.head_home)), capture_output=True, text=True,
                          timeout=900)
    # As when every board is unreachable: exit 3, the reason on stderr.
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "edgefarm: run 1: no job could run: board far skipped: host nowhere has no worker in the cluster")


@pytest.mark.slow
def test_worker_leaves_the_cluster_on_ctrl_c(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "lab3.log"
    worker = _worker(cluster.address, "lab3", tmp_path / "home3", cluster.inventory, log)
    try:
        ids = [n["node_id"] for n in cluster.nodes()["nodes"] if n["alive"] and n["host"] == "lab3"]
        assert len(ids) == 1
        assert "board later: reachable (local)" in log.read_text()
        session = _ray_node_session(worker)
        assert any("raylet" in line for line in _processes_in_session(session))
        worker.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        # Ray's own stop of the node may take its time on a busy machine; the worker waits for it up
        # to LEAVE_TIMEOUT_S, then ends what is left.
        assert worker.wait(timeout=LEAVE_TIMEOUT_S + 60) == 0, log.read_text()[-3000:]
    finally:
        stop_session(worker, 60)
    assert log.read_text().splitlines()[-1] == f"edgefarm worker: left the Ray cluster at {cluster.address} (host lab3)"
    assert _processes_in_session(session) == []  # its Ray node's processes went with it
    after = {n["node_id"]: n for n in cluster.nodes()["nodes"]}  # the head still answers
    assert not after[ids[0]]["alive"]
    assert sorted(n["host"] or "" for n in after.values() if n["alive"]) == ["", "lab2"]
    assert cluster.nodes()["hosts_without_worker"]["lab3"] == ["later"]


@pytest.mark.slow
def test_worker_refused_by_the_head_says_why_in_one_line(cluster: Cluster) -> None:
    env = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"}  # the head asks for its token
    proc = subprocess.run([*CLI, "worker", "--address", cluster.address, "--host", "lab4"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"edgefarm: error: --address {cluster.address}: the Ray node could not join: the head refused its token "
        "(Ray: InvalidAuthToken); the cluster uses token authentication: set RAY_AUTH_MODE=token and its token "
        "(RAY_AUTH_TOKEN, or ~/.ray/auth_token copied from the head)"]
    assert not any(n["host"] == "lab4" for n in cluster.nodes()["nodes"])


def test_a_host_that_several_workers_advertise_is_named_with_its_nodes() -> None:
    from controller.run.cluster import render
    from controller.run.hosts import several_workers

    assert several_workers({"lab2": ["n1"], "lab3": []}) == []
    (warning,) = several_workers({"lab2": ["n1"], "lab4": ["b" * 56, "a" * 56]})
    assert warning.startswith(f"host lab4 has 2 workers in the cluster (nodes {'a' * 12}, {'b' * 12}): ")
    assert "stop every `edgefarm worker --host lab4` but the one on the machine that reaches its boards" in warning
    table = render({"nodes": [], "hosts_without_worker": {}, "hosts_with_several_workers": {"lab4": ["x", "y"]}})
    assert table.splitlines()[-1].startswith("host lab4 has 2 workers in the cluster (nodes x, y)")

"""Board hosts: which Ray node each board's actor runs on.

A board is reached from one machine: the phone on its USB port, the Jetson on its lab network.
The inventory says which (``host: NAME``); ``edgefarm worker --host NAME`` on that machine starts
a Ray node that advertises NAME, and the board's actor is placed on that node and nowhere else.
A board that names no host runs on the controller's own node (the driver's), never on a worker:
its transport (a local board, an SSH address only the controller's network routes) was written
for the controller's machine.

How a node advertises its host: a Ray node label, ``edgefarm-host=NAME`` (``ray start --labels``),
and the actor asks for it with ``label_selector``. Not a custom resource
(``--resources '{"edgefarm-host:NAME": 1000}'`` with each actor asking a fraction), because a host
is what a node *is*, not an amount it has: a label matches exactly, with no quantity to choose,
to run out of, or to be taken by anything else that asks for a fraction of it; and
``ray.nodes()`` shows it as the node's label, which ``edgefarm cluster`` prints as it is. Both
were tried on the Ray this project pins (2.60): ``ray start --labels`` is accepted (hidden from
``--help`` while Ray calls labels new) and ``label_selector`` places the actor on the labelled
node, or leaves it pending when no node matches; hence the check below, before any actor is made.

The driver's node is pinned with a hard ``NodeAffinitySchedulingStrategy`` on its node id.

Conversions (``conversion_placement``) run on the nodes with CPUs where no board measures on the
node's own CPUs (a local board: its transport's ``measures_on_host``), selected by Ray's own
``ray.io/node-id`` label; where every node with CPUs has such a board, they run where Ray puts
them and those boards start measuring only once every conversion is done.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generic, Iterable, TypeVar

from controller.config.inventory import BoardSpec

# The node label a board host's node carries. Ray reserves keys under ray.io/; this one is ours.
LABEL = "edgefarm-host"
# How often a running run looks for the hosts of the boards it skipped for want of a worker.
LATE_CHECK_S = 10.0

J = TypeVar("J")


def no_worker(host: str) -> str:
    """Why a run skips the boards of ``host``."""
    return f"host {host} has no worker in the cluster"


def node_labels(host: str) -> list[str]:
    """The ``ray start`` flags by which a node advertises ``host`` (checked with ``check_host``)."""
    return ["--labels", f"{LABEL}={host}"]


def placement(board: BoardSpec) -> dict[str, Any]:
    """The actor options that put ``board``'s actor on its host's node, or on the driver's node."""
    if board.host is not None:
        return {"label_selector": {LABEL: board.host}}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}


def conversion_placement(boards: Iterable[BoardSpec]) -> tuple[dict[str, Any], set[str]]:
    """Ray's options for the run's conversion tasks, and the boards held until every conversion
    is done (none, when the conversions have nodes of their own)."""
    import ray

    from controller.plugins import TRANSPORTS

    here = ray.get_runtime_context().get_node_id()
    hosts = live_hosts()
    on_host = [b for b in boards if TRANSPORTS.get(b.transport).measures_on_host]
    busy = {node for b in on_host for node in (hosts.get(b.host, []) if b.host is not None else [here])}
    quiet = sorted(n["NodeID"] for n in ray.nodes()
                   if n.get("Alive") and (n.get("Resources") or {}).get("CPU", 0) > 0 and n["NodeID"] not in busy)
    if quiet:
        return {"label_selector": {"ray.io/node-id": f"in({','.join(quiet)})"}}, set()
    return {}, {b.name for b in on_host}


def live_hosts() -> dict[str, list[str]]:
    """Host name -> the ids of the live Ray nodes that advertise it."""
    import ray

    hosts: dict[str, list[str]] = {}
    for node in ray.nodes():
        host = (node.get("Labels") or {}).get(LABEL)
        if node.get("Alive") and host:
            hosts.setdefault(host, []).append(node["NodeID"])
    return hosts


def several_workers(hosts: dict[str, list[str]]) -> list[str]:
    """A warning for each host that more than one live node advertises (from ``live_hosts``): Ray
    places its boards' actors on either, and only one may reach the boards."""
    return [f"host {host} has {len(ids)} workers in the cluster (nodes {', '.join(i[:12] for i in sorted(ids))}): "
            "its boards' actors may land on either; stop every `edgefarm worker --host "
            f"{host}` but the one on the machine that reaches its boards"
            for host, ids in sorted(hosts.items()) if len(ids) > 1]


def unserved(boards: Iterable[BoardSpec]) -> dict[str, str]:
    """Board name -> why it is skipped, for each board whose host no live node advertises (its
    actor would wait for such a node for ever)."""
    boards = [b for b in boards if b.host is not None]
    if not boards:
        return {}
    hosts = live_hosts()
    return {b.name: no_worker(b.host) for b in boards if b.host is not None and b.host not in hosts}


class LateHosts(Generic[J]):
    """The boards a run skipped because their host had no worker when it started. While the run
    goes on, their hosts are looked for every ``LATE_CHECK_S``; the boards of a host that has
    joined are handed to ``join``, which starts them and returns their jobs."""

    def __init__(self, waiting: list[BoardSpec], join: Callable[[list[BoardSpec]], list[J]]) -> None:
        self.waiting, self.join = waiting, join
        self.checked = time.monotonic()

    def wait_s(self) -> float | None:
        """How long the run may wait for a result before looking again (None: no board waits)."""
        return max(0.0, self.checked + LATE_CHECK_S - time.monotonic()) if self.waiting else None

    def joined(self) -> tuple[list[BoardSpec], list[J]]:
        """The boards whose host has joined since the last look, and their jobs."""
        if not self.waiting or time.monotonic() < self.checked + LATE_CHECK_S:
            return [], []
        self.checked = time.monotonic()
        hosts = live_hosts()
        boards = [b for b in self.waiting if b.host in hosts]
        if not boards:
            return [], []
        self.waiting = [b for b in self.waiting if b not in boards]
        return boards, self.join(boards)

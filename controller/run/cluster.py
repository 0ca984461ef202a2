"""The Ray cluster: joining it (a private local Ray by default, a cluster's head with
``--ray-address``), and what its nodes are and serve (``edgefarm cluster``)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from controller.config.inventory import Inventory
from controller.errors import UserError, one_line
from controller.run.hosts import LABEL, live_hosts, no_worker, several_workers


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray reports usage to its makers' service by default. A farm runs in labs that often have no
    # way out, and EdgeFarm sends nothing anywhere on its user's behalf: off, unless the user set it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _check_reachable(address)  # Ray itself would retry a dead address for minutes
    # "local" starts a private Ray instead of joining whatever RAY_ADDRESS points at.
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(
            f"--ray-address {address}: cannot join the Ray cluster ({one_line(exc)}); if the cluster uses "
            "token authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None


def _check_reachable(address: str, flag: str = "--ray-address",
                     hint: str = "start one with `ray start --head` or leave the flag out for a local Ray") -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {address}: no Ray head answers there ({exc}); {hint}") from None


def check_head(address: str, flag: str) -> None:
    """A ``UserError`` naming ``flag`` unless a Ray head's port answers at ``address`` (HOST:PORT)."""
    _check_reachable(address, flag, "start one with `ray start --head` on the head's machine")


def nodes(inventory: Inventory) -> dict[str, Any]:
    """The cluster's nodes (live and dead), each with its host, CPUs and the boards it serves, and
    the hosts the inventory names that no live node advertises, with their boards. Boards that
    name no host are served by the controller's node: the one this process joined."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    rows: list[dict[str, Any]] = []
    # The live nodes first, the controller's first among them.
    for node in sorted(ray.nodes(), key=lambda n: (not n.get("Alive"), n["NodeID"] != here,
                                                   n.get("NodeManagerAddress", ""), n["NodeID"])):
        host = (node.get("Labels") or {}).get(LABEL)
        alive = bool(node.get("Alive"))
        controller = node["NodeID"] == here
        boards = [b.name for b in inventory.boards
                  if alive and ((host is not None and b.host == host) or (controller and b.host is None))]
        rows.append({"node_id": node["NodeID"], "address": node.get("NodeManagerAddress"), "alive": alive,
                     "host": host, "controller": controller, "cpus": node.get("Resources", {}).get("CPU", 0),
                     "boards": boards})
    served = live_hosts()
    unserved: dict[str, list[str]] = {}
    for board in inventory.boards:
        if board.host is not None and board.host not in served:
            unserved.setdefault(board.host, []).append(board.name)
    return {"nodes": rows, "hosts_without_worker": unserved,
            "hosts_with_several_workers": {h: ids for h, ids in served.items() if len(ids) > 1}}


def render(cluster: dict[str, Any], fmt: str = "table") -> str:
    """``nodes``' answer as a table (one line per node, then one per host without a worker) or JSON."""
    if fmt == "json":
        return json.dumps(cluster, indent=2)
    alive = sum(1 for n in cluster["nodes"] if n["alive"])
    lines = [f"{alive} node{'s' if alive != 1 else ''} alive, {len(cluster['nodes']) - alive} dead"]
    table = [("NODE", "ADDRESS", "STATE", "HOST", "CPUS", "BOARDS")]
    for n in cluster["nodes"]:
        host = " ".join(filter(None, [n["host"], "(controller)" if n["controller"] else None])) or "-"
        table.append((n["node_id"][:12], n["address"] or "-", "alive" if n["alive"] else "dead", host,
                      f"{n['cpus']:g}" if n["alive"] else "-", ", ".join(n["boards"]) or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table]
    for host, boards in sorted(cluster["hosts_without_worker"].items()):
        lines.append(f"{no_worker(host)}: a run skips its boards {', '.join(boards)} "
                     f"(start `edgefarm worker --host {host}` on it)")
    lines += several_workers(cluster.get("hosts_with_several_workers", {}))
    return "\n".join(lines)

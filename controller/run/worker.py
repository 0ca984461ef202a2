"""``edgefarm worker``: this machine joins a farm's Ray cluster as the host of some boards.

It runs ``ray start --address HEAD --block`` as its child, with the node label that says which
host this is (``controller.run.hosts``), probes the boards the inventory names for this host,
and stays in the foreground, as systemd or a container wants. Ctrl-C or SIGTERM leaves the
cluster: SIGTERM to that child alone, which drains its node and stops the node's own processes.
Not ``ray stop``: that stops every Ray node on the machine, a head or another worker among them.

The child runs in a session of its own, so the terminal's Ctrl-C reaches this process only, and
what is left of the child's process group after a child that would not stop can be killed
without touching anything else.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

from controller.config.inventory import BoardSpec
from controller.errors import UserError, one_line
from controller.run.cluster import check_head
from controller.run.hosts import node_labels
from controller.workspace import workspace

# How long `ray start` may take to join (it waits for the head's GCS); how long it may take to
# drain and stop once told to (Ray drains for up to 30 s).
JOIN_TIMEOUT_S = 120.0
LEAVE_TIMEOUT_S = 60.0
STARTED = "Ray runtime started."
# Ray's own resources with flags of their own: `ray start --resources` refuses them.
_FLAGS = {"CPU": "--num-cpus", "GPU": "--num-gpus"}


class NodeStopped(Exception):
    """The Ray node stopped by itself (its head went away, or one of its processes died)."""


def resources_flags(resources: dict[str, float]) -> list[str]:
    """``ray start`` flags for the resources ``--resources`` gave: CPU and GPU by their own flags
    (whole numbers), every other one in ``--resources``."""
    import json

    flags: list[str] = []
    custom = {}
    for name, amount in resources.items():
        if name in _FLAGS:
            flags += [_FLAGS[name], str(int(amount))]
        else:
            custom[name] = amount
    if custom:
        flags += ["--resources", json.dumps(custom)]
    return flags


def check_resources(data: Any) -> dict[str, float]:
    """``--resources``' JSON, checked: an object of resource names to amounts >= 0 (CPU and GPU
    whole numbers); else ``ValueError`` saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a JSON object of resource names to amounts, e.g. '{\"CPU\": 4, \"camera\": 1}'")
    checked: dict[str, float] = {}
    for name, amount in data.items():
        if not name or not name.isprintable() or len(name) > 128:
            raise ValueError(f"{name!r} is not a resource name")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount < 0:
            raise ValueError(f"{name}: {amount!r} is not an amount (a number >= 0)")
        if name in _FLAGS and amount != int(amount):
            raise ValueError(f"{name}: {amount!r} is not a whole number")
        checked[name] = float(amount)
    return checked


def serve(address: str, host: str, resources: dict[str, float], inventory_path: Path | None) -> int:
    """Join the cluster at ``address`` as board host ``host`` until Ctrl-C or SIGTERM; 0 when it
    left as asked, 1 when the node stopped by itself. A head that does not answer, or refuses the
    node, is a ``UserError``."""
    from controller.config.inventory import load_inventory

    check_head(address, "--address")
    inventory, source = load_inventory(inventory_path)
    boards = [b for b in inventory.boards if b.host == host]
    node = RayNode(address, host, resources)
    _stop_on_sigterm()
    try:
        ip = node.join()
        print(f"edgefarm worker: joined the Ray cluster at {address} as host {host} (node IP {ip or '?'}"
              f"{', ' + _shown(resources) if resources else ''})", flush=True)
        if not boards:
            print(f"edgefarm worker: {source} names no board with host {host}: this node serves none "
                  f"(add `host: {host}` to its boards)", flush=True)
        for board in boards:
            print(f"board {board.name}: {probe(board)}", flush=True)
        print(f"edgefarm worker: serving {len(boards)} board{'s' if len(boards) != 1 else ''}; "
              "Ctrl-C leaves the cluster", flush=True)
        node.wait()
    except KeyboardInterrupt:
        node.leave()
        print(f"edgefarm worker: left the Ray cluster at {address} (host {host})", flush=True)
        return 0
    except NodeStopped as exc:
        print(f"edgefarm worker: the Ray node stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        node.leave()
    return 1  # not reached: wait() returns only by an exception


def probe(board: BoardSpec) -> str:
    """One line: the board reached from here (chip, engines found), or why not."""
    from controller.boards.agent_bundle import build_agent_bundle
    from controller.boards.session import BoardSession
    from controller.workspace import workspace

    try:
        session = BoardSession(board, build_agent_bundle(workspace() / "agent"))
        try:
            found = session.start()
        finally:
            session.close()
    except Exception as exc:  # noqa: BLE001 - every board is reported, reachable or not; the node stays
        return f"UNREACHABLE ({board.transport}): {one_line(exc)}"
    fp = found.get("fingerprint", {})
    engines = sorted(name for name, info in found.get("engines", {}).items() if info.get("available"))
    return (f"reachable ({board.transport}): {fp.get('arch', '?')} {fp.get('cpu_model', '?')}, "
            f"engines {', '.join(engines) or 'none'}")


def _shown(resources: dict[str, float]) -> str:
    return "resources " + ", ".join(f"{name}={amount:g}" for name, amount in sorted(resources.items()))


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd's stop, ``docker stop``) leaves the cluster as Ctrl-C does."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def stop_session(proc: subprocess.Popen[Any], timeout: float) -> None:
    """End ``proc``, which leads a session of its own: SIGTERM to it (``ray start --block`` then
    drains its node and stops the node's processes), up to ``timeout`` seconds for it to end, then
    SIGKILL to whatever is left of its process group. Nothing outside that group is touched."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class RayNode:
    """The child ``ray start --block`` process that is this machine's node in the cluster."""

    def __init__(self, address: str, host: str, resources: dict[str, float]) -> None:
        self.address = address
        self.argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--block",
                     "--disable-usage-stats", *node_labels(host), *resources_flags(resources)]
        self.proc: subprocess.Popen[str] | None = None
        self.output: deque[str] = deque(maxlen=200)  # Ray's own lines, for the reason it stopped
        self.started = threading.Event()
        self.ip: str | None = None

    def join(self) -> str | None:
        """Start the node and wait until it is up; its IP address as Ray saw it."""
        # Ray reports usage to its makers unless told not to; EdgeFarm sends nothing anywhere.
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED=os.environ.get("RAY_USAGE_STATS_ENABLED", "0"),
                   # The host's cache of the driver's files (controller.run.depot), where this command
                   # was started: Ray starts the node's actors in a folder of its own.
                   EDGEFARM_HOME=str(workspace()))
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        waited = 0.0
        while not self.started.wait(0.5):
            waited += 0.5
            if self.proc.poll() is not None:
                raise UserError(f"--address {self.address}: the Ray node could not join: {self._why()}")
            if waited >= JOIN_TIMEOUT_S:
                raise UserError(f"--address {self.address}: the Ray node did not join within {JOIN_TIMEOUT_S:.0f} s: "
                                f"{self._why()}")
        return self.ip

    def wait(self) -> None:
        """Until the node stops by itself (``NodeStopped``), or a signal interrupts."""
        assert self.proc is not None
        self.proc.wait()
        raise NodeStopped(self._why())

    def leave(self) -> None:
        """Stop the node: SIGTERM to ``ray start``, which drains it and stops its processes; what
        is left of its process group after ``LEAVE_TIMEOUT_S`` is killed. Nothing else is touched."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C must not cut the leaving short and leave the node's processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_session(proc, LEAVE_TIMEOUT_S)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self.output.append(line)
            if "Local node IP:" in line:
                self.ip = line.rsplit("Local node IP:", 1)[1].strip()
            if STARTED in line:
                self.started.set()

    def _why(self) -> str:
        """The line of Ray's output that says what went wrong, on one line, with a hint where one is known."""
        lines = [line for line in self.output if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line]
        if any("InvalidAuthToken" in line or "AuthenticationError" in line for line in lines):
            # Ray's own words run to several sentences; what to do fits in one.
            return ("the head refused its token (Ray: InvalidAuthToken); the cluster uses token authentication: "
                    "set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token copied from the head)")
        return " ".join((errors or lines or ["(no output)"])[-1].split())[:400]

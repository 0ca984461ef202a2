"""Faults done to test boards while a run uses them: a link set down, a slow and lossy link,
a killed agent or sshd, each started the moment a job is running on the board."""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def set_link(host_veth: str, state: str) -> None:
    """``ip link set VETH down``: the cable pulled out of the board, as far as TCP can tell."""
    _sh("ip", "link", "set", host_veth, state)


def netem_available(namespace: str, dev: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", dev, "root",
                           "netem", "delay", "1ms"], capture_output=True, text=True)
    if done.returncode == 0:
        subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
    return done.returncode == 0


def impair(namespace: str, board_veth: str, host_veth: str, delay_ms: int, loss_pct: int) -> str:
    """Make the board's link slow and lossy in both directions; returns how it was done.

    tc netem (delay and loss) where the kernel has it. Some kernels are built without netem
    (this CI's VM kernel is one); there the link is made slow with tbf, a rate limit whose
    queue delays every packet, and lossy with an nftables rule dropping packets at random.
    """
    if netem_available(namespace, board_veth):
        for ns_argv, dev in ((["ip", "netns", "exec", namespace], board_veth), ([], host_veth)):
            _sh(*ns_argv, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")
        return f"netem delay {delay_ms} ms, loss {loss_pct}%"
    for ns_argv, dev in ((["ip", "netns", "exec", namespace], board_veth), ([], host_veth)):
        # latency = the longest a packet may wait in the queue; 2 Mbit/s makes a push take seconds.
        _sh(*ns_argv, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "2mbit", "burst", "16kb",
            "latency", f"{max(delay_ms, 50)}ms")
    nft = ["ip", "netns", "exec", namespace, "nft"]
    _sh(*nft, "add", "table", "inet", "edgefarm_faults")
    for hook in ("input", "output"):
        _sh(*nft, "add", "chain", "inet", "edgefarm_faults", hook, f"{{ type filter hook {hook} priority 0; }}")
        _sh(*nft, "add", "rule", "inet", "edgefarm_faults", hook, "iifname" if hook == "input" else "oifname",
            board_veth, "numgen", "random", "mod", "100", "<", str(loss_pct), "drop")
    return f"tbf 2 Mbit/s (queue up to {max(delay_ms, 50)} ms), nftables random loss {loss_pct}% (no netem here)"


def clear_impairment(namespace: str, board_veth: str, host_veth: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", board_veth, "root"], capture_output=True)
    subprocess.run(["tc", "qdisc", "del", "dev", host_veth, "root"], capture_output=True)
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", "edgefarm_faults"],
                   capture_output=True)


def namespace_processes(namespace: str) -> dict[int, str]:
    """pid -> command line of every process in the board's namespace."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    found = {}
    for pid in pids:
        try:
            found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # it ended meanwhile
    return found


def kill_matching(namespace: str, match: Callable[[str], bool]) -> list[int]:
    killed = [pid for pid, cmd in namespace_processes(namespace).items() if match(cmd)]
    if killed:
        subprocess.run(["kill", "-KILL", *map(str, killed)], capture_output=True)
    return killed


@contextmanager
def when_job_runs(board_root: Path, action: Callable[[], object], settle_s: float = 1.0) -> Iterator[list[object]]:
    """Do ``action`` once a measurement job's agent is running on the board (its pid file is
    written), ``settle_s`` later so the fault lands mid-measurement; yields what it returned."""
    done: list[object] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if list((board_root / "jobs").glob("job-*/agent.pid")):
                time.sleep(settle_s)
                done.append(action())
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield done
    finally:
        stop.set()
        watcher.join(timeout=10)

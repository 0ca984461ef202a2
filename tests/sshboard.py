"""SSH test boards: a real OpenSSH server in its own network namespace, reached over a veth pair.

Each board has its own host key and address; the tests reach it with paramiko exactly as a
Jetson on the lab network would be reached. The namespace shares this machine's files, so
the board's Python is this virtual environment's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshBoard:
    name: str
    namespace: str
    host_veth: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    host_key_pub: str
    files: Path

    def inventory_entry(self, **extra: object) -> dict:
        return {"name": self.name, "transport": "ssh",
                "ssh": {"host": self.host, "port": self.port, "user": self.user, "key_file": str(self.key_file),
                        "known_hosts": str(self.known_hosts), "connect_timeout": 5}, **extra}


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def netns_refusal() -> str | None:
    """Why this machine cannot host SSH test boards, or None when it can."""
    if not Path(SSHD).is_file():
        return f"{SSHD} missing (scripts/setup.sh installs openssh-server)"
    probe = f"efprobe{int(time.time() * 1000) % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"network namespaces refused here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextmanager
def ssh_board(name: str, index: int) -> Iterator[SshBoard]:
    files = Path(tempfile.mkdtemp(prefix=f"edgefarm-{name}-"))
    ns, host_veth, board_veth = f"ef-{name}", f"efh{index}", f"efb{index}"
    host_ip, board_ip = f"10.231.{index}.1", f"10.231.{index}.2"
    sshd = None
    try:
        for key in ("host_key", "client_key"):
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}-{key}", "-f", str(files / key))
        shutil.copy(files / "client_key.pub", files / "authorized_keys")
        host_pub = (files / "host_key.pub").read_text().split()
        (files / "known_hosts").write_text(f"{board_ip} {host_pub[0]} {host_pub[1]}\n")
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", board_veth)
        _sh("ip", "link", "set", board_veth, "netns", ns)
        _sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_veth)
        _sh("ip", "link", "set", host_veth, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{board_ip}/24", "dev", board_veth)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", board_veth, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        (files / "sshd_config").write_text(
            f"ListenAddress {board_ip}\nPort 22\nHostKey {files / 'host_key'}\n"
            f"PidFile {files / 'sshd.pid'}\nAuthorizedKeysFile {files / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        sshd = subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", str(files / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((board_ip, 22), timeout=1).close()
                break
            except OSError:
                if sshd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd for {name} did not start: {sshd.stderr.read() if sshd.stderr else ''}")
                time.sleep(0.1)
        yield SshBoard(name, ns, host_veth, board_ip, 22, "root", files / "client_key", files / "known_hosts",
                       " ".join(host_pub[:2]), files)
    finally:
        if sshd is not None:
            sshd.kill()
            sshd.wait()
        # Session processes sshd forked for each connection outlive the listener: end them too.
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        subprocess.run(["kill", "-KILL", *pids], capture_output=True) if pids else None
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(files, ignore_errors=True)

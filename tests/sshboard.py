"""SSH test boards: a real OpenSSH server in its own network namespace, reached over a veth pair.

Each board has its own host key and address; the tests reach it with paramiko exactly as a
Jetson on the lab network would be reached. The namespace shares this machine's files, so
the board's Python is this virtual environment's.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.netns import board_net, namespaces_refused, wait_for_listener

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
    return namespaces_refused()


@contextmanager
def ssh_board(name: str, index: int, loopback: bool = False) -> Iterator[SshBoard]:
    """A board at 10.231.INDEX.2; with ``loopback`` its sshd also listens on 127.0.0.1 inside
    the namespace, an address only a jump host on the board itself can reach."""
    files = Path(tempfile.mkdtemp(prefix=f"edgefarm-{name}-"))
    sshd = None
    try:
        for key in ("host_key", "client_key"):
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}-{key}", "-f", str(files / key))
        shutil.copy(files / "client_key.pub", files / "authorized_keys")
        host_pub = (files / "host_key.pub").read_text().split()
        with board_net(name, index, "10.231") as net:
            hosts = [net.board_ip, "127.0.0.1"] if loopback else [net.board_ip]
            (files / "known_hosts").write_text("".join(f"{h} {host_pub[0]} {host_pub[1]}\n" for h in hosts))
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
            (files / "sshd_config").write_text(
                "".join(f"ListenAddress {h}\n" for h in hosts) + f"Port 22\nHostKey {files / 'host_key'}\n"
                f"PidFile {files / 'sshd.pid'}\nAuthorizedKeysFile {files / 'authorized_keys'}\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
            )
            log = files / "sshd.log"
            with log.open("wb") as log_fh:
                sshd = subprocess.Popen(["ip", "netns", "exec", net.namespace, SSHD, "-D", "-e", "-f",
                                         str(files / "sshd_config")], stdout=subprocess.DEVNULL, stderr=log_fh)
            try:
                wait_for_listener(sshd, net.board_ip, 22, f"sshd for {name}", log)
                yield SshBoard(name, net.namespace, net.host_veth, net.board_ip, 22, "root", files / "client_key",
                               files / "known_hosts", " ".join(host_pub[:2]), files)
            finally:
                sshd.kill()  # board_net then ends the sessions it forked
                sshd.wait()
    finally:
        shutil.rmtree(files, ignore_errors=True)

"""The SSH transport against a real OpenSSH server on a test board in its own network namespace:
what only SSH does (host keys, jump hosts, agent auth, a cut link). What every transport does
(argv, exit codes, timeouts, files) is in test_transport_contract.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from controller.boards.transports import open_transport
from controller.config.inventory import BoardSpec
from controller.errors import BoardUnreachable
from tests.sshboard import SshBoard, netns_refusal, ssh_board


@pytest.fixture(scope="module")
def board() -> SshBoard:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    with ssh_board("sshtest", 41) as b:
        yield b


def transport(b: SshBoard, **ssh: object):
    entry = b.inventory_entry()
    entry["ssh"].update(ssh)
    return open_transport(BoardSpec.model_validate(entry))


def test_a_home_relative_path_resolves_to_the_login_users_home(board: SshBoard) -> None:
    t = transport(board)
    try:
        assert t.resolve("~/.edgefarm") == "/root/.edgefarm"
    finally:
        t.close()


def test_unknown_host_key_is_refused_unless_the_board_opts_in(board: SshBoard, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(BoardUnreachable, match="unknown host key, refused"):
        transport(board, known_hosts=str(empty))
    t = transport(board, known_hosts=str(empty), accept_new_host_key=True)
    t.close()
    assert board.host_key_pub in empty.read_text()  # remembered, like OpenSSH's accept-new
    transport(board, known_hosts=str(empty)).close()  # and trusted from now on


def test_a_changed_host_key_is_always_refused(board: SshBoard, tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{board.host} {kind} {key}\n")
    for accept_new in (False, True):
        with pytest.raises(BoardUnreachable, match="the host key changed"):
            transport(board, known_hosts=str(forged), accept_new_host_key=accept_new)


def test_an_unreachable_board_says_why(tmp_path: Path) -> None:
    entry = {"name": "gone", "transport": "ssh",
             "ssh": {"host": "127.0.0.1", "port": 9, "user": "root", "connect_timeout": 3}}
    with pytest.raises(BoardUnreachable, match="root@127.0.0.1:9: cannot connect"):
        open_transport(BoardSpec.model_validate(entry))


@pytest.mark.slow
def test_a_run_spreads_over_local_and_ssh_boards_and_survives_an_unreachable_one(
        board: SshBoard, tmp_path: Path, edgefarm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml
    from sqlalchemy import select

    from controller.cli import main
    from controller.results.database import open_db
    from controller.results.store import Board as BoardRow
    from controller.results.store import Job
    from tests.conftest import small_ppocr_spec

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [
        {"name": "local"},
        board.inventory_entry(chip="rk3399-test", python=sys.executable, workdir=str(tmp_path / "board-files")),
        {"name": "jetson-off", "chip": "orin", "transport": "ssh",
         "ssh": {"host": "127.0.0.1", "port": 9, "user": "root", "connect_timeout": 3}},
    ]}))
    spec = small_ppocr_spec(tmp_path, name="lab")
    data = yaml.safe_load(spec.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "ppocr-cls"]
    data["variants"], data["engines"] = ["fp32"], ["onnxruntime"]
    data["boards"] = ["local", board.name, "jetson-off"]
    spec.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'lab.db'}"

    assert main(["run", str(spec), "--inventory", str(inventory), "--db", url]) == 0
    assert "board jetson-off skipped: unreachable: " in capsys.readouterr().out
    with open_db(url)() as db:
        jobs = sorted((j.board.name, j.status) for j in db.scalars(select(Job)))
        boards = {b.name: b for b in db.scalars(select(BoardRow))}
    assert jobs == sorted([(board.name, "ok"), ("local", "ok")])
    assert boards[board.name].chip == "rk3399-test" and boards[board.name].fingerprint["cores"] >= 1
    assert "cannot connect" in boards["jetson-off"].last_error
    # Nothing is left in the board's job directories; the artifacts (model, inputs, dataset and the
    # end-to-end images; and the health check's golden model and data) stay cached by hash.
    assert not any((tmp_path / "board-files" / "jobs").iterdir())
    assert len(list((tmp_path / "board-files" / "cache").iterdir())) == 4 + 2

    assert main(["select", "--db", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and "rk3399-test" in {r["chip"] for r in rows}  # one row per chip


def test_a_board_behind_a_jump_host_is_reached_through_it(tmp_path: Path) -> None:
    # The board's sshd also listens on 127.0.0.1 inside its namespace: from this machine that
    # address is not the board at all, so only a tunnel through the jump host gets there.
    with ssh_board("jumpbox", 43, loopback=True) as jb:
        hop = {"user": "root", "key_file": str(jb.key_file), "known_hosts": str(jb.known_hosts), "connect_timeout": 5}
        entry = {"name": "behind", "transport": "ssh",
                 "ssh": {"host": "127.0.0.1", **hop, "jump": {"host": jb.host, **hop}}}
        t = open_transport(BoardSpec.model_validate(entry))
        try:
            done = t.run(["sh", "-c", "echo $SSH_CONNECTION; readlink /proc/self/ns/net"], timeout=20)
        finally:
            t.close()
        connection, netns = done.stdout.split("\n")[:2]
        assert connection.split()[0] == "127.0.0.1" and connection.split()[2:] == ["127.0.0.1", "22"]
        inside = subprocess.run(["ip", "netns", "exec", jb.namespace, "readlink", "/proc/self/ns/net"],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert netns == inside

        # A jump host that refuses us is named in the error.
        entry["ssh"]["jump"]["known_hosts"] = str(tmp_path / "empty_known_hosts")
        with pytest.raises(BoardUnreachable, match=f"root@{jb.host}:22: unknown host key"):
            open_transport(BoardSpec.model_validate(entry))


def test_a_key_held_by_a_running_ssh_agent_is_used_when_no_key_file_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ssh_board("agentauth", 45) as b:
        entry = b.inventory_entry()
        del entry["ssh"]["key_file"]
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        with pytest.raises(BoardUnreachable, match="root@10.231.45.2:22: "):  # no agent, no key: refused
            open_transport(BoardSpec.model_validate(entry))

        sock = tmp_path / "agent.sock"
        started = subprocess.run(["ssh-agent", "-s", "-a", str(sock)], capture_output=True, text=True, check=True)
        pid = started.stdout.split("SSH_AGENT_PID=")[1].split(";")[0]
        try:
            env = {"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"}
            subprocess.run(["ssh-add", str(b.key_file)], env=env, capture_output=True, check=True)
            monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
            t = open_transport(BoardSpec.model_validate(entry))
            try:
                assert t.run(["echo", "via the agent"], timeout=20).stdout == "via the agent\n"
            finally:
                t.close()
        finally:
            subprocess.run(["kill", pid], capture_output=True)


def test_a_link_cut_under_a_command_is_a_lost_board_not_a_result(board: SshBoard) -> None:
    from tests.faults import set_link

    entry = board.inventory_entry()
    entry["ssh"]["dead_after"] = 3
    t = open_transport(BoardSpec.model_validate(entry))
    cutter = threading.Timer(1.0, set_link, (board.host_veth, "down"))
    cutter.start()
    try:
        # Noticed within dead_after: not after the command's 60 s timeout, and not as an exit code.
        with pytest.raises(BoardUnreachable, match="the connection was lost during sleep"):
            t.run(["sleep", "120"], timeout=60)
    finally:
        cutter.join()
        set_link(board.host_veth, "up")
        t.close()
    t = open_transport(BoardSpec.model_validate(entry))  # the board is back once the link is
    try:
        assert t.run(["true"], timeout=20).exit_code == 0
    finally:
        t.close()

"""Deployed releases on a board (agent/releases.py) on hand-made bundle folders: installing only
what verifies, the atomic switch, history, rollback, pruning and the served bundle's process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Dict

import pytest

from agent import releases
from agent.__main__ import main as agent_main
from tests.net import free_port

# A stand-in for the runtime's bundle.pyz: serve answers /healthz with the manifest's bundle id.
FAKE_SERVER = '''\
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
here = os.path.dirname(os.path.abspath(sys.argv[0]))
manifest = json.load(open(os.path.join(here, "manifest.json")))
if sys.argv[1] != "serve":
    sys.exit(2)
port, host = int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[sys.argv.index("--host") + 1]
if os.environ.get("FAKE_SERVER_FAILS"):
    print("cannot load model: boom", flush=True)
    sys.exit(1)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "bundle_id": manifest["bundle_id"]}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
HTTPServer((host, port), H).serve_forever()
'''


def make_bundle(folder: Path, tag: str) -> str:
    """A bundle folder as the bundler writes it (contract: manifest.json, files' sha256, bundle_id)."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "bundle.pyz", "w") as zf:
        zf.writestr("__main__.py", FAKE_SERVER)
    (folder / "models" / "m").mkdir(parents=True)
    (folder / "models" / "m" / "model.onnx").write_bytes(f"weights {tag}".encode())
    files = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest()
             for rel in ("bundle.pyz", "models/m/model.onnx")}
    manifest: Dict[str, Any] = {"format": 1, "chip": "test", "tag": tag, "files": files, "models": [
        {"name": "m", "engine": "onnxruntime", "variant": tag, "label": tag, "artifact": {}}]}
    manifest["bundle_id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":"))
                                           .encode()).hexdigest()[:16]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return str(manifest["bundle_id"])


def push(root: Path, tag: str) -> str:
    """What the controller does before `release install`: a bundle folder in incoming/<id>."""
    staging = root / "staging" / tag
    bundle_id = make_bundle(staging, tag)
    (root / "deploy" / "incoming").mkdir(parents=True, exist_ok=True)
    os.rename(staging, root / "deploy" / "incoming" / bundle_id)
    return bundle_id


def deploy(root: Path, tag: str) -> str:
    bundle_id = push(root, tag)
    releases.install(str(root), bundle_id)
    releases.activate(str(root), bundle_id)
    return bundle_id


def test_install_verifies_and_moves_the_bundle_into_releases(tmp_path: Path) -> None:
    bundle_id = push(tmp_path, "a")
    assert releases.install(str(tmp_path), bundle_id) == {"installed": bundle_id, "already": False, "replaced": False}
    assert releases.installed(str(tmp_path)) == [bundle_id]
    assert not (tmp_path / "deploy" / "incoming" / bundle_id).exists()
    assert releases.current(str(tmp_path)) is None  # installing switches nothing


@pytest.mark.parametrize("damage, named", [
    (lambda f: (f / "models" / "m" / "model.onnx").write_bytes(b"tampered"), "models/m/model.onnx: sha256"),
    (lambda f: (f / "bundle.pyz").unlink(), "bundle.pyz: missing"),
    (lambda f: (f / "extra.sh").write_text("rm -rf /"), "extra.sh: not in the manifest"),
    (lambda f: (f / "manifest.json").write_text((f / "manifest.json").read_text().replace('"test"', '"other"')),
     "does not hash to bundle_id"),
])
def test_a_mismatching_bundle_is_refused_and_nothing_is_half_installed(tmp_path: Path, damage: Any,
                                                                       named: str) -> None:
    bundle_id = push(tmp_path, "a")
    damage(tmp_path / "deploy" / "incoming" / bundle_id)
    with pytest.raises(releases.ReleaseError, match=named):
        releases.install(str(tmp_path), bundle_id)
    assert releases.installed(str(tmp_path)) == []
    assert os.listdir(tmp_path / "deploy" / "incoming") == []


def test_a_manifest_path_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "deploy" / "incoming" / "x"
    make_bundle(folder, "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../../../etc/passwd"] = "0" * 64
    del manifest["bundle_id"]
    manifest["bundle_id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":"))
                                           .encode()).hexdigest()[:16]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    os.rename(folder, folder.with_name(manifest["bundle_id"]))
    with pytest.raises(releases.ReleaseError, match="not a plain path inside the bundle"):
        releases.install(str(tmp_path), manifest["bundle_id"])


@pytest.mark.parametrize("bad", ["../../etc", "0123", "ABCDEF0123456789", "0123456789abcdef/x"])
def test_bundle_ids_are_16_hex_digits_so_no_path_escapes(tmp_path: Path, bad: str) -> None:
    for action in (releases.install, releases.activate):
        with pytest.raises(releases.ReleaseError, match="bad bundle id"):
            action(str(tmp_path), bad)


def test_a_damaged_installed_release_is_replaced_by_a_verified_push(tmp_path: Path) -> None:
    bundle_id = deploy(tmp_path, "a")
    model = tmp_path / "deploy" / "releases" / bundle_id / "models" / "m" / "model.onnx"
    original = model.read_bytes()
    push(tmp_path, "a")  # the same bundle again: an intact copy is kept as it is
    assert releases.install(str(tmp_path), bundle_id)["already"] is True
    unpacked = model.with_name(model.name + ".d")  # what the runtime makes when it loads a packed model
    unpacked.mkdir()
    (unpacked / "model.xml").write_text("<net/>")
    assert releases.verify_folder(str(model.parents[2]), bundle_id) == []
    model.write_bytes(b"bit rot")
    push(tmp_path, "a")
    assert releases.install(str(tmp_path), bundle_id)["replaced"] is True
    assert model.read_bytes() == original
    assert releases.verify_folder(str(model.parents[2]), bundle_id) == []


def test_activate_switches_current_atomically_and_records_history(tmp_path: Path) -> None:
    a = deploy(tmp_path, "a")
    link = tmp_path / "deploy" / "current"
    assert os.readlink(link) == os.path.join("releases", a)  # relative: the root may move
    assert json.loads((link / "manifest.json").read_text())["bundle_id"] == a
    b = deploy(tmp_path, "b")
    assert releases.current(str(tmp_path)) == b
    assert releases.previous(str(tmp_path)) == a
    assert releases.read_history(str(tmp_path)) == {"history": [a, b], "failed": []}
    assert [p.name for p in (tmp_path / "deploy").iterdir() if "tmp" in p.name] == []  # no temporary link left


def test_rollback_goes_back_one_release_and_marks_the_one_it_left_failed(tmp_path: Path) -> None:
    a, b, c = deploy(tmp_path, "a"), deploy(tmp_path, "b"), deploy(tmp_path, "c")
    assert releases.rollback(str(tmp_path)) == {"left": c, "current": b}
    assert releases.rollback(str(tmp_path)) == {"left": b, "current": a}
    state = releases.state(str(tmp_path))
    assert (state["current"], state["previous"], sorted(state["failed"])) == (a, None, sorted([b, c]))
    assert releases.rollback(str(tmp_path)) == {"left": a, "current": None}  # nothing before: no current
    assert not os.path.lexists(tmp_path / "deploy" / "current")
    with pytest.raises(releases.ReleaseError, match="no current release"):
        releases.rollback(str(tmp_path))
    releases.activate(str(tmp_path), c)  # deployed again: no longer failed
    assert c not in releases.read_history(str(tmp_path))["failed"]


def test_prune_keeps_current_and_previous_and_drops_the_oldest(tmp_path: Path) -> None:
    ids = [deploy(tmp_path, tag) for tag in "abcde"]
    releases.rollback(str(tmp_path))  # current d, previous c; e failed
    assert releases.prune(str(tmp_path), 3)["removed"] == ids[:2]
    assert releases.installed(str(tmp_path)) == sorted(ids[2:])
    assert releases.prune(str(tmp_path), 1)["removed"] == [ids[4]]  # current and previous stay even so
    assert releases.installed(str(tmp_path)) == sorted(ids[2:4])
    assert releases.read_history(str(tmp_path))["history"] == ids[2:4]


def test_the_cli_prints_json_and_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle_id = push(tmp_path, "a")
    assert agent_main(["release", "install", str(tmp_path), bundle_id]) == 0
    assert agent_main(["release", "activate", str(tmp_path), bundle_id]) == 0
    capsys.readouterr()
    assert agent_main(["release", "state", str(tmp_path)]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["current"] == bundle_id and state["releases"] == [bundle_id]
    assert state["server"] == {"pid": None, "port": None, "release": None, "running": False}
    assert agent_main(["release", "activate", str(tmp_path), "0123456789abcdef"]) == 1
    err = capsys.readouterr().err
    assert err == "release activate: release 0123456789abcdef is not installed\n"


def test_serve_start_detaches_the_server_and_serve_stop_ends_only_it(tmp_path: Path) -> None:
    bundle_id = deploy(tmp_path, "a")
    port = free_port()
    agent = [sys.executable, "-c", "import sys; from agent.__main__ import main; sys.exit(main())"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([*agent, "release", "serve-start", str(tmp_path), "--port", str(port),
                           "--host", "127.0.0.1"], capture_output=True, text=True, cwd=root, timeout=60)
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout)["pid"]
    try:  # the agent that started it has exited: the server lives on in its own session
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["bundle_id"] == bundle_id
        assert os.getsid(pid) == pid
        server = releases.state(str(tmp_path))["server"]
        assert (server["pid"], server["port"], server["release"], server["running"]) == (pid, port, bundle_id, True)
        # A pid that is not our server (a reused number) is never signalled.
        info = json.loads((tmp_path / "deploy" / "server.json").read_text())
        (tmp_path / "deploy" / "server.json").write_text(json.dumps({**info, "pid": os.getpid()}))
        assert releases.serve_stop(str(tmp_path))["stopped"] is None
        (tmp_path / "deploy" / "server.json").write_text(json.dumps(info))
        assert releases.serve_stop(str(tmp_path))["stopped"] == pid
        assert releases.state(str(tmp_path))["server"]["running"] is False
    finally:
        if releases._cmdline(pid):
            os.kill(pid, 9)


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(tmp_path, "a")
    monkeypatch.setenv("FAKE_SERVER_FAILS", "1")
    with pytest.raises(releases.ReleaseError, match="exited 1 at start: cannot load model: boom"):
        releases.serve_start(str(tmp_path), free_port(), "127.0.0.1", wait_s=30)
    assert not (tmp_path / "deploy" / "server.json").exists()


def test_discard_removes_a_refused_release_but_never_one_in_use(tmp_path: Path) -> None:
    a = deploy(tmp_path, "a")
    b = push(tmp_path, "b")
    releases.install(str(tmp_path), b)
    assert releases.discard(str(tmp_path), a) == {"removed": []}  # current
    assert releases.discard(str(tmp_path), b) == {"removed": ["releases/" + b]}
    assert releases.installed(str(tmp_path)) == [a]
    assert releases.state(str(tmp_path))["models"] == [
        {"name": "m", "engine": "onnxruntime", "variant": "a", "label": "a"}]

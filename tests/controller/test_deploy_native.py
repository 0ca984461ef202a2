"""Deploying to a board without Python (``agent: false``): the release steps in the board's own shell
commands (controller/deploy/native.py) and the smoke test by the engine's native tool.

The fast tests drive a local board with ``agent: false`` (this machine's coreutils as the board's
shell commands), record every argv sent and check the layout against agent/releases.py reading the
same folder. The slow ones deploy a real bundle of ppocr-cls on OpenVINO to the ADB test device as a
board without Python, with OpenVINO's real benchmark_app as its native tool (as test_native_run.py
measures it there)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import yaml

from agent import releases as agent_releases
from controller.boards.session import BoardSession
from controller.boards.transports import Completed, Transport
from controller.cli import main
from controller.config.inventory import BoardSpec
from controller.deploy import deployer
from controller.deploy.manifest import bundle_id_of, render
from controller.deploy.native import NativeReleases, check_root
from controller.deploy.releases import ReleaseRefused
from controller.deploy.smoke import NOT_COMPARED_NATIVE
from controller.results.database import open_db
from controller.results.store import Deployment
from tests.net import free_port
from tests.refusal import one_line_error

BENCHMARK_APP = str(Path(sys.executable).parent / "benchmark_app")
NATIVE = {"openvino": {"tool": "benchmark_app", "binary": BENCHMARK_APP}}
# Every word a NativeReleases command may hold that is not a path: commands and their options.
WORDS = {"rm", "-rf", "-f", "mkdir", "-p", "test", "-d", "ls", "-1", "cat", "readlink", "mv", "-T", "ln", "-s",
         "sha256sum", "chmod", "755", "tar", "-xf", "-C"}
PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


# -- the release steps on a local board without Python (fast) ----------------------------------


class Recording(Transport):
    """The board's own transport, with every argv kept; ``no_mv_T`` answers ``mv -T`` as a busybox
    without the option does."""

    def __init__(self, inner: Transport, no_mv_T: bool = False) -> None:
        self.inner, self.board, self.no_mv_T = inner, inner.board, no_mv_T
        self.default_workdir = inner.default_workdir
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float, cwd: str | None = None) -> Completed:
        self.argvs.append(list(argv))
        if self.no_mv_T and list(argv[:2]) == ["mv", "-T"]:
            return Completed(1, "", "mv: invalid option -- 'T'\nBusyBox v1.31.1 multi-call binary.\n")
        return self.inner.run(argv, timeout, cwd)

    def put(self, local: Path, remote: str) -> None:
        self.inner.put(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.inner.get(remote, local)

    def resolve(self, path: str) -> str:
        return self.inner.resolve(path)

    def close(self) -> None:
        self.inner.close()


def make_bundle(folder: Path, payload: bytes) -> tuple[Path, str]:
    """A small bundle folder: its manifest lists every file's sha256 and has the id of its content."""
    import hashlib

    files = {"bundle.pyz": b"zipapp " + payload, "golden/0.png": b"png " + payload,
             "models/m1/0123456789abcdef.onnx": b"onnx " + payload}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    manifest: dict[str, Any] = {"format": 1, "chip": "c", "models": [],
                                "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}
    manifest["bundle_id"] = bundle_id_of(manifest)
    (folder / "manifest.json").write_text(render(manifest))
    return folder, manifest["bundle_id"]


@pytest.fixture
def native_board(tmp_path: Path) -> Iterator[tuple[NativeReleases, Recording, Path]]:
    agent = tmp_path / "agent.pyz"
    agent.write_bytes(b"never run on a board without Python")
    board = BoardSpec(name="nopy", agent=False, workdir=str(tmp_path / "board"), native=NATIVE)
    session = BoardSession(board, agent)
    recording = Recording(session.transport)
    session.transport = recording
    try:
        yield NativeReleases(session), recording, Path(session.root)
    finally:
        session.close()


def pushed(releases: NativeReleases, folder: Path, bundle_id: str) -> dict[str, Any]:
    files = json.loads((folder / "manifest.json").read_text())["files"]
    releases.push(folder, bundle_id, files)
    return releases.install(bundle_id)


def assert_only_words_and_checked_paths(argvs: list[list[str]], root: Path) -> None:
    """No pasted strings: every argv item is a fixed word, a path under the board's deploy/ (or
    cache/, for the tool) whose parts are plain names, or such a relative name."""
    assert argvs
    for argv in argvs:
        for item in argv:
            if item in WORDS:
                continue
            rel = item[len(str(root)) + 1:] if item.startswith(f"{root}/") else item
            assert rel.split("/")[0] in ("deploy", "cache", "releases", "bundle.pyz", "golden", "models",
                                         "manifest.json"), (item, argv)
            assert all(PART.match(p) for p in rel.split("/")), (item, argv)


def test_release_steps_on_a_board_without_python_keep_the_agents_layout(
        native_board: tuple[NativeReleases, Recording, Path], tmp_path: Path) -> None:
    releases, recording, root = native_board
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, a = make_bundle(tmp_path / "a", b"first")
    second, b = make_bundle(tmp_path / "b", b"second")
    assert releases.state()["current"] is None and releases.installed() == []

    assert pushed(releases, first, a)["installed"] == a
    assert releases.activate(a) == {"current": a, "was": None, "atomic": True}
    assert pushed(releases, second, b)["already"] is False
    releases.activate(b)
    deploy = root / "deploy"
    assert os.readlink(deploy / "current") == f"releases/{b}"
    assert sorted(os.listdir(deploy / "releases")) == sorted([a, b]) and os.listdir(deploy / "incoming") == []
    # The same layout a board with Python keeps: the agent's own code reads it as its own.
    seen = agent_releases.state(str(root))
    assert (seen["current"], seen["previous"], seen["history"]) == (b, a, [a, b])
    assert releases.state()["models"] == [] and releases.state()["previous"] == a

    assert releases.rollback() == {"left": b, "current": a}
    assert agent_releases.read_history(str(root)) == {"history": [b, a], "failed": [b]}
    assert agent_releases.previous(str(root)) is None  # the release left is not gone back to
    # Pushed again, the installed copy that still verifies is kept as it is.
    assert pushed(releases, second, b)["already"] is True
    releases.activate(b)
    assert releases.prune(1) == []  # current and previous always stay
    assert releases.rollback()["current"] == a
    assert releases.discard(b) == {"removed": [f"releases/{b}"]}
    assert releases.installed() == [a]
    assert releases.rollback() == {"left": a, "current": None}
    assert not os.path.lexists(deploy / "current")
    assert_only_words_and_checked_paths(recording.argvs, root)


def test_a_file_altered_in_transfer_is_refused_and_nothing_is_installed(
        native_board: tuple[NativeReleases, Recording, Path], tmp_path: Path) -> None:
    releases, _, root = native_board
    folder, a = make_bundle(tmp_path, b"x")
    releases.push(folder, a, json.loads((folder / "manifest.json").read_text())["files"])
    (root / "deploy" / "incoming" / a / "models" / "m1" / "0123456789abcdef.onnx").write_bytes(b"onnx y")
    with pytest.raises(ReleaseRefused, match="models/m1/0123456789abcdef.onnx: sha256 does not match"):
        releases.install(a)
    assert os.listdir(root / "deploy" / "incoming") == [] and releases.installed() == []
    # The manifest on the board is checked too, against its hash computed here.
    releases.push(folder, a, json.loads((folder / "manifest.json").read_text())["files"])
    (root / "deploy" / "incoming" / a / "manifest.json").write_text("{}")
    with pytest.raises(ReleaseRefused, match="manifest.json: sha256 does not match"):
        releases.install(a)
    assert releases.installed() == []


def test_a_board_mv_without_T_still_switches_the_link(native_board: tuple[NativeReleases, Recording, Path],
                                                      tmp_path: Path) -> None:
    releases, recording, root = native_board
    recording.no_mv_T = True
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub, payload in (("a", b"1"), ("b", b"2")):
        folder, bundle_id = make_bundle(tmp_path / sub, payload)
        pushed(releases, folder, bundle_id)
        assert releases.activate(bundle_id)["atomic"] is False
        # Not moved into the old release's folder, as a plain `mv` onto a link to a folder would.
        assert os.readlink(root / "deploy" / "current") == f"releases/{bundle_id}"
    assert [n for n in os.listdir(root / "deploy") if n.startswith("current.tmp")] == []
    for release in os.listdir(root / "deploy" / "releases"):
        assert not any(n.startswith("current") for n in os.listdir(root / "deploy" / "releases" / release))


@pytest.mark.parametrize("name", ["../escape", "-rf", "a b", "models/$(reboot)", ".hidden", "a;rm", "x\ny", ""])
def test_a_manifest_file_name_that_is_not_a_plain_path_is_refused_before_any_command(
        native_board: tuple[NativeReleases, Recording, Path], tmp_path: Path, name: str) -> None:
    releases, recording, _ = native_board
    with pytest.raises(ReleaseRefused, match="not a plain path"):
        releases.push(tmp_path, "0123456789abcdef", {name: "0" * 64})
    assert recording.argvs == []


@pytest.mark.parametrize("root", ["~/edgefarm", "relative/dir", "/data/-rf/x", "/a/../b", "/a/b\n"])
def test_a_root_that_could_be_read_as_an_option_or_climb_is_refused(root: str) -> None:
    assert check_root(root) is not None
    assert check_root("/data/local/tmp/edgefarm/phone") is None


def test_requirements_name_the_engine_and_the_inventory_key_to_add(
        native_board: tuple[NativeReleases, Recording, Path], tmp_path: Path) -> None:
    releases, recording, _ = native_board
    manifest = {"models": [{"name": "det", "engine": "ncnn"}, {"name": "rec", "engine": "onnxruntime"}]}
    ncnn, ort = releases.requirements(tmp_path, manifest)
    assert "det: engine ncnn has no native tool on board nopy" in ncnn
    assert "`native: {ncnn: {tool: benchncnn, binary: PATH}}`" in ncnn
    assert "rec: engine onnxruntime has no native tool in EdgeFarm" in ort and "board with Python" in ort
    assert recording.argvs == []  # asked on the controller, before the board is touched


def test_predict_and_serve_on_a_board_without_python_are_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [{"name": "nopy", "agent": False, "native": NATIVE,
                                                     "workdir": str(tmp_path / "nopy")}]}))
    image = tmp_path / "page.png"
    image.write_bytes(b"not read")
    db = f"sqlite:///{tmp_path / 'd.db'}"
    assert main(["predict", str(image), "--board", "nopy", "--inventory", str(inventory), "--db", db]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "runs no bundle runtime" in line and "board with Python" in line
    assert main(["deploy", str(tmp_path), "--board", "nopy", "--serve", "8080", "--inventory", str(inventory),
                 "--db", db]) == 2
    assert "--serve 8080: board nopy: " in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "nopy").exists()


# -- the ADB test device as a board without Python, with OpenVINO's benchmark_app (slow) ---------


@pytest.fixture(scope="module")
def ov_bundles(ppocr_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real bundles of ppocr-cls on OpenVINO (fp32 and fp16) for the chip the run measured."""
    out = tmp_path_factory.mktemp("native-bundles")
    select = io.StringIO()
    with contextlib.redirect_stdout(select):
        assert main(["select", "--format", "json", "--db", ppocr_db]) == 0
    chip = str(json.loads(select.getvalue())[0]["chip"])
    for variant in ("fp32", "fp16"):
        assert main(["bundle", "--chip", chip, "--model", "ppocr-cls", "--engine", "openvino", "--variant", variant,
                     "--db", ppocr_db, "--out", str(out / variant)]) == 0
    return {"fp32": out / "fp32", "fp16": out / "fp16"}


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The ADB test device as a board without Python: its inventory entry, its files on this machine."""
    from tests.adbboard import adb_board
    from tests.netns import namespaces_refused

    why = namespaces_refused() or (None if shutil.which("adb") else "adb missing (scripts/setup.sh installs it)")
    if why:
        pytest.skip(why)
    port = free_port()
    files = tmp_path_factory.mktemp("phone")
    with adb_board("natdep", 83) as device:
        try:
            yield {"name": "phone", "chip": "sim-phone", "transport": "adb", "agent": False,
                   "workdir": str(files / "edgefarm"), "adb": {"serial": device.serial, "server_port": port},
                   "native": NATIVE}
        finally:
            subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


def manifest_of(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "manifest.json").read_text()))


def rows(db: str, board: str) -> list[Deployment]:
    with open_db(db)() as s:
        return list(s.query(Deployment).filter_by(board=board).order_by(Deployment.id))


def current_of(deploy: Path) -> str | None:
    link = deploy / "current"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


GENEROUS = "50"  # latency factor for deploys that must pass on a machine other tests load too


def test_deploy_to_a_board_without_python_smoke_tests_with_the_native_tool_and_rolls_back(
        ov_bundles: dict[str, Path], phone: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [phone]}))
    db = f"sqlite:///{tmp_path / 'd.db'}"
    common = ["--board", "phone", "--inventory", str(inventory), "--db", db]
    fp32, fp16 = manifest_of(ov_bundles["fp32"]), manifest_of(ov_bundles["fp16"])
    a, b = fp32["bundle_id"], fp16["bundle_id"]
    deploy = Path(phone["workdir"]) / "deploy"

    started = time.monotonic()
    assert main(["deploy", str(ov_bundles["fp32"]), "--latency-factor", GENEROUS, *common]) == 0
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert "phone: checking the board's native tools: openvino -> benchmark_app" in out
    assert f"outputs {NOT_COMPARED_NATIVE}" in out and "by benchmark_app" in out
    (row,) = rows(db, "phone")
    assert (row.status, row.bundle_id) == ("ok", a)
    smoke = row.smoke
    assert smoke is not None
    board_ms, farm_ms = smoke["per_model_infer_p50_ms"]["ppocr-cls"], fp32["models"][0]["measured"]["p50_ms"]
    assert board_ms > 0 and smoke["native"]["ppocr-cls"]["tool"] == "benchmark_app"
    assert smoke["native"]["ppocr-cls"]["input_shape"][2:] == fp32["models"][0]["inputs"][0]["shape"][2:] or \
        None in fp32["models"][0]["inputs"][0]["shape"]
    with capsys.disabled():  # the figures for the issue note (pytest -s shows them)
        print(f"\nnative deploy to the ADB device: {took:.1f} s; smoke p50 {board_ms:.2f} ms "
              f"(benchmark_app) vs farm {farm_ms:.2f} ms")
    # On the board: the verified release, its files as the bundle has them, and current.
    assert current_of(deploy) == a and sorted(os.listdir(deploy / "releases")) == [a]
    release = deploy / "releases" / a
    for rel, sha in fp32["files"].items():
        assert subprocess.run(["sha256sum", str(release / rel)], capture_output=True, text=True,
                              check=True).stdout.split()[0] == sha
    assert os.listdir(deploy / "incoming") == []
    assert not (Path(phone["workdir"]) / "agent").exists()  # no agent was ever pushed

    assert main(["deploy", str(ov_bundles["fp16"]), "--latency-factor", GENEROUS, *common]) == 0
    assert current_of(deploy) == b
    capsys.readouterr()
    assert main(["deploy", "--rollback", *common]) == 0
    assert f"phone: rolling back {b} -> {a}" in capsys.readouterr().out
    assert current_of(deploy) == a
    assert json.loads((deploy / "history.json").read_text()) == {"failed": [b], "history": [b, a]}

    # Drift, read from the board with readlink.
    assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["bundle"], record["drift"]) == (a, False)
    os.remove(deploy / "current")
    os.symlink(f"releases/{b}", deploy / "current")
    assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["actual"], record["drift"]) == (b, True)
    os.remove(deploy / "current")
    os.symlink(f"releases/{a}", deploy / "current")

    # No runtime to predict with: one line, exit 2.
    assert main(["predict", str(release / fp32["golden"]["inputs"][0]), *common]) == 2
    assert "runs no bundle runtime" in one_line_error(capsys.readouterr().err)


def test_an_artifact_damaged_on_a_board_without_python_is_rolled_back(
        ov_bundles: dict[str, Path], phone: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    entry = {**phone, "workdir": str(Path(phone["workdir"]).with_name("damaged"))}
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [entry]}))
    db = f"sqlite:///{tmp_path / 'd.db'}"
    fp32 = manifest_of(ov_bundles["fp32"])
    artifact = fp32["models"][0]["artifact"]["file"]

    def damage(session: Any, release_dir: str) -> None:  # as a failing card would, with the board's own dd
        done = session.transport.run(["dd", "if=/dev/zero", f"of={release_dir}/{artifact}", "bs=4", "count=1",
                                      "conv=notrunc"], timeout=30)
        assert done.exit_code == 0, done.stderr

    monkeypatch.setattr(deployer, "after_switch", damage)
    assert main(["deploy", str(ov_bundles["fp32"]), "--board", "phone", "--inventory", str(inventory),
                 "--db", db]) == 1
    out = capsys.readouterr().out
    assert "phone: FAILED: smoke test: " in out and artifact in out and "rolled back to no release" in out
    assert current_of(Path(entry["workdir"]) / "deploy") is None
    (row,) = rows(db, "phone")
    assert row.status == "rolled-back" and artifact in str(row.reason)


def test_a_board_whose_inventory_lacks_the_engines_native_tool_is_refused_before_any_push(
        ov_bundles: dict[str, Path], phone: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    entry = {**phone, "workdir": str(Path(phone["workdir"]).with_name("lacking")),
             "native": {"ncnn": {"tool": "benchncnn", "binary": BENCHMARK_APP}}}
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump({"boards": [entry]}))
    db = f"sqlite:///{tmp_path / 'd.db'}"
    assert main(["deploy", str(ov_bundles["fp32"]), "--board", "phone", "--inventory", str(inventory),
                 "--db", db]) == 1
    out = capsys.readouterr().out
    (failed,) = [line for line in out.splitlines() if line.startswith("phone: FAILED: ")]
    assert "engine openvino has no native tool on board phone" in failed
    assert "`native: {openvino: {tool: benchmark_app, binary: PATH}}`" in failed and "nothing switched" in failed
    assert not (Path(entry["workdir"]) / "deploy").exists()
    (row,) = rows(db, "phone")
    assert row.status == "failed"

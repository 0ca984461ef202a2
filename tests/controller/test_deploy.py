"""Deploying bundles built from a real run onto real boards of this machine: the local board, an
SSH test board and the ADB test device (each in its own network namespace). Deploy, predict, the
served bundle over HTTP, canary stop, automatic rollback (latency, an artifact damaged on the
board), rollback by hand, drift, and bad input refused in one line with nothing half installed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from controller.cli import main
from controller.deploy import deployer
from controller.results import queries
from controller.results.database import open_db
from controller.results.store import Deployment
from tests.adbboard import AdbBoard, adb_board
from tests.net import free_port
from tests.netns import namespaces_refused
from tests.refusal import one_line_error
from tests.sshboard import SshBoard, netns_refusal, ssh_board

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PAGE_LINES = ("Canary5Release", "Rollback8Drift", "EdgeFarm2Board")
GENEROUS = "50"  # latency factor for deploys that must pass on a machine other tests load too


# -- shared pieces ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(ppocr_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real bundles for the chip the run measured: the OCR pipeline, and the classifier alone."""
    out = tmp_path_factory.mktemp("bundles")
    chip = _chip(ppocr_db)
    assert main(["bundle", "--chip", chip, "--model", "ppocr-det", "--model", "ppocr-cls", "--model", "ppocr-rec",
                 "--db", ppocr_db, "--out", str(out / "ocr")]) == 0
    assert main(["bundle", "--chip", chip, "--model", "ppocr-cls", "--engine", "onnxruntime", "--variant", "int8",
                 "--db", ppocr_db, "--out", str(out / "cls")]) == 0
    return {"ocr": out / "ocr", "cls": out / "cls"}


def _chip(db: str) -> str:
    """The chip the run measured, as `edgefarm select` names it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["select", "--format", "json", "--db", db]) == 0
    return str(json.loads(out.getvalue())[0]["chip"])


def bundle_id(folder: Path) -> str:
    return str(json.loads((folder / "manifest.json").read_text())["bundle_id"])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page of three printed lines, rendered here."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (800, 400), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 40)
    for i, text in enumerate(PAGE_LINES):
        draw.text((40, 40 + 120 * i), text, font=font, fill="black")
    path = tmp_path_factory.mktemp("page") / "page.png"
    img.save(path)
    return path


def write_inventory(path: Path, *boards: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"boards": list(boards)}))
    return path


def local(name: str, root: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "workdir": str(root / name), **extra}


def deploy_dir(root: Path, name: str) -> Path:
    return root / name / "deploy"


def current_of(deploy: Path) -> str | None:
    link = deploy / "current"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def rows(db: str, board: str) -> list[Deployment]:
    with open_db(db)() as s:
        return list(s.query(Deployment).filter_by(board=board).order_by(Deployment.id))


def post_page(url: str, page: Path) -> dict[str, Any]:
    request = urllib.request.Request(url + "/predict", data=page.read_bytes(), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return dict(json.loads(resp.read()))


def healthz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def texts(result: dict[str, Any]) -> list[str]:
    return [line["text"] for line in result["lines"]]


def stop_server(deploy: Path) -> None:
    """A served bundle on the local board outlives the test: end it (only the pid it recorded)."""
    info = deploy / "server.json"
    if info.is_file():
        pid = json.loads(info.read_text())["pid"]
        try:
            if "serve" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, 9)
        except OSError:
            pass  # already gone


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'deploy.db'}"


# -- SSH board and ADB device -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sshb() -> Iterator[SshBoard]:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    with ssh_board("depssh", 81) as b:
        yield b


@pytest.fixture(scope="module")
def adbb() -> Iterator[AdbBoard]:
    if shutil.which("adb") is None:
        pytest.skip("adb missing (scripts/setup.sh installs Debian's adb)")
    why = namespaces_refused()
    if why:
        pytest.skip(why)
    with adb_board("depadb", 82) as b:
        yield b


@pytest.fixture(scope="module")
def adb_port() -> Iterator[int]:
    port = free_port()
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


def test_deploy_to_an_ssh_board_predict_and_serve_over_http(bundles: dict[str, Path], page: Path, sshb: SshBoard,
                                                            tmp_path: Path, db: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    files = tmp_path / "board-files"
    inventory = write_inventory(tmp_path / "inv.yaml", sshb.inventory_entry(python=sys.executable, workdir=str(files)))
    port = free_port()
    ocr = bundle_id(bundles["ocr"])
    assert main(["deploy", str(bundles["ocr"]), "--board", sshb.name, "--serve", str(port), "--serve-address", "0.0.0.0",
                 "--latency-factor", GENEROUS, "--inventory", str(inventory), "--db", db]) == 0
    out = capsys.readouterr().out
    assert f"{sshb.name}: pushing " in out and "outputs same" in out
    assert current_of(files / "deploy") == ocr
    assert sorted(os.listdir(files / "deploy" / "releases")) == [ocr]
    (row,) = rows(db, sshb.name)
    assert (row.status, row.action, row.bundle_id, row.serve_port) == ("ok", "deploy", ocr, port)
    assert row.smoke is not None and row.smoke["outputs"] == "same" and row.smoke["infer_p50_ms"] > 0

    assert main(["predict", str(page), "--board", sshb.name, "--json", "--inventory", str(inventory)]) == 0
    assert texts(json.loads(capsys.readouterr().out)) == list(PAGE_LINES)
    assert not any(n.startswith("predict-") for n in os.listdir(files / "jobs"))  # the pushed image is gone

    url = f"http://{sshb.host}:{port}"  # the board's own address, across the namespace's veth
    assert healthz(url)["bundle_id"] == ocr
    assert texts(post_page(url, page)) == list(PAGE_LINES)

    assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["board"], record["bundle"], record["status"], record["drift"]) == (sshb.name, ocr, "ok", False)


def test_deploy_to_the_adb_device_predict_and_serve(bundles: dict[str, Path], page: Path, adbb: AdbBoard,
                                                    adb_port: int, tmp_path: Path, db: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    files = tmp_path / "device-files"
    entry = {"name": adbb.name, "transport": "adb", "adb": {"serial": adbb.serial, "server_port": adb_port},
             "python": sys.executable, "workdir": str(files)}
    inventory = write_inventory(tmp_path / "inv.yaml", entry)
    port = free_port()
    ocr = bundle_id(bundles["ocr"])
    assert main(["deploy", str(bundles["ocr"]), "--board", adbb.name, "--serve", str(port), "--serve-address", "0.0.0.0",
                 "--latency-factor", GENEROUS, "--inventory", str(inventory), "--db", db]) == 0
    assert "outputs same" in capsys.readouterr().out
    assert current_of(files / "deploy") == ocr

    assert main(["predict", str(page), "--board", adbb.name, "--inventory", str(inventory)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{page}: 3 lines: ") and " | ".join(PAGE_LINES) in line  # the readable form

    url = f"http://{adbb.serial.split(':')[0]}:{port}"
    assert texts(post_page(url, page)) == list(PAGE_LINES)


# -- the local board: canary, rollback, drift, bad input ------------------------------------------


def interpreter_without_the_engine(folder: Path) -> Path:
    """A Python with numpy and Pillow (this environment's own, linked in) but no onnxruntime: a
    board whose interpreter lacks the bundle's engine."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p, "numpy").is_dir()))
    (target,) = (folder / "lib").glob("python3*/site-packages")
    for name in os.listdir(site):
        if name.split("-")[0].split(".")[0].lower() in ("numpy", "pil", "pillow"):
            os.symlink(site / name, target / name)
    python = folder / "bin" / "python"
    assert subprocess.run([python, "-c", "import numpy, PIL"], capture_output=True).returncode == 0
    assert subprocess.run([python, "-c", "import onnxruntime"], capture_output=True).returncode != 0
    return python


def test_a_failing_canary_leaves_the_other_boards_untouched_and_a_missing_engine_is_named(
        bundles: dict[str, Path], tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    bare = str(interpreter_without_the_engine(tmp_path / "venv"))
    inventory = write_inventory(tmp_path / "inv.yaml", local("bare", tmp_path, python=bare),
                                local("second", tmp_path))
    code = main(["deploy", str(bundles["cls"]), "--board", "bare", "--board", "second", "--canary", "1",
                 "--inventory", str(inventory), "--db", db])
    out = capsys.readouterr().out
    assert code == 1
    (failed,) = [line for line in out.splitlines() if line.startswith("bare: FAILED: ")]
    assert "requirements not met: " in failed and "onnxruntime" in failed and "pip install" in failed
    assert "second  not deployed: canary failed on bare" in out
    # Nothing half installed on the canary, nothing at all on the other board.
    bare_deploy = deploy_dir(tmp_path, "bare")
    assert os.listdir(bare_deploy / "releases") == [] and os.listdir(bare_deploy / "incoming") == []
    assert current_of(bare_deploy) is None
    assert not (tmp_path / "second").exists()
    (row,) = rows(db, "bare")
    assert (row.status, row.canary) == ("failed", True) and "onnxruntime" in str(row.reason)
    assert rows(db, "second") == []


def test_a_smoke_test_over_the_latency_factor_rolls_back_to_the_previous_release(
        bundles: dict[str, Path], tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = write_inventory(tmp_path / "inv.yaml", local("b1", tmp_path))
    cls, ocr = bundle_id(bundles["cls"]), bundle_id(bundles["ocr"])
    common = ["--board", "b1", "--inventory", str(inventory), "--db", db]
    assert main(["deploy", str(bundles["cls"]), "--latency-factor", GENEROUS, *common]) == 0
    capsys.readouterr()
    assert main(["deploy", str(bundles["ocr"]), "--latency-factor", "0.001", *common]) == 1
    out = capsys.readouterr().out
    assert "deploy failed on b1: latency: " in out and f"rolled back to {cls}" in out
    deploy = deploy_dir(tmp_path, "b1")
    assert current_of(deploy) == cls
    history = json.loads((deploy / "history.json").read_text())
    assert history["failed"] == [ocr]
    assert [(r.bundle_id, r.status) for r in rows(db, "b1")] == [(cls, "ok"), (ocr, "rolled-back")]
    assert rows(db, "b1")[1].previous_bundle_id == cls


def test_an_artifact_damaged_on_the_board_after_transfer_fails_the_smoke_test(
        bundles: dict[str, Path], tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The first release of a board: with nothing to go back to, the current link goes."""
    inventory = write_inventory(tmp_path / "inv.yaml", local("b1", tmp_path))
    manifest = json.loads((bundles["cls"] / "manifest.json").read_text())
    artifact = manifest["models"][0]["artifact"]["file"]

    def damage(session: Any, release_dir: str) -> None:  # as a failing card would, through the board's own shell
        target = f"{release_dir}/{artifact}"
        done = session.transport.run([session.python, "-c", "import sys; open(sys.argv[1], 'r+b').write(b'XXXX')", target],
                                     timeout=30)
        assert done.exit_code == 0, done.stderr

    monkeypatch.setattr(deployer, "after_switch", damage)
    assert main(["deploy", str(bundles["cls"]), "--board", "b1", "--inventory", str(inventory), "--db", db]) == 1
    out = capsys.readouterr().out
    assert "b1: FAILED: smoke test: " in out and artifact in out and "rolled back to no release" in out
    assert current_of(deploy_dir(tmp_path, "b1")) is None
    (row,) = rows(db, "b1")
    assert row.status == "rolled-back" and artifact in str(row.reason)


def test_rollback_by_hand_moves_the_served_bundle_back_and_drift_is_seen(
        bundles: dict[str, Path], page: Path, tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = write_inventory(tmp_path / "inv.yaml", local("b1", tmp_path))
    cls, ocr = bundle_id(bundles["cls"]), bundle_id(bundles["ocr"])
    common = ["--board", "b1", "--inventory", str(inventory), "--db", db]
    port = free_port()
    deploy = deploy_dir(tmp_path, "b1")
    url = f"http://127.0.0.1:{port}"
    try:
        assert main(["deploy", str(bundles["cls"]), "--serve", str(port), "--latency-factor", GENEROUS, *common]) == 0
        assert healthz(url)["bundle_id"] == cls
        assert json.loads((deploy / "server.json").read_text())["host"] == "127.0.0.1"  # the board's own programs only
        # The next deploy restarts the server on the new release without being asked.
        assert main(["deploy", str(bundles["ocr"]), "--latency-factor", GENEROUS, *common]) == 0
        assert healthz(url)["bundle_id"] == ocr
        capsys.readouterr()

        assert main(["deploy", "--rollback", *common]) == 0
        assert f"b1: rolling back {ocr} -> {cls}" in capsys.readouterr().out
        assert current_of(deploy) == cls
        assert healthz(url)["bundle_id"] == cls  # the server left the release it served
        assert [(r.action, r.bundle_id, r.previous_bundle_id, r.status) for r in rows(db, "b1")][-1] == \
            ("rollback", cls, ocr, "ok")
        assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
        (record,) = json.loads(capsys.readouterr().out)
        assert (record["bundle"], record["status"], record["drift"]) == (cls, "rolled-back", False)

        # Behind the farm's back: the link switched by hand on the board.
        os.remove(deploy / "current")
        os.symlink(f"releases/{ocr}", deploy / "current")
        assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
        (record,) = json.loads(capsys.readouterr().out)
        assert (record["bundle"], record["actual"], record["drift"]) == (cls, ocr, True)
        assert ocr in record["why"]
        with open_db(db)() as session:  # kept for the dashboard, which reads no board
            assert queries.latest_readings(session)["b1"].release == ocr
        assert main(["deployments", "--inventory", str(inventory), "--db", db]) == 0
        assert "DRIFT" in capsys.readouterr().out

        # A board the inventory no longer has: drift unknown, and why.
        write_inventory(inventory, local("other", tmp_path))
        assert main(["deployments", "--inventory", str(inventory), "--db", db, "--format", "json"]) == 0
        (record,) = json.loads(capsys.readouterr().out)
        assert record["drift"] is None and "not in" in record["why"]
    finally:
        stop_server(deploy)


def test_bad_input_is_one_line_and_touches_no_board(bundles: dict[str, Path], page: Path, tmp_path: Path, db: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    inventory = write_inventory(tmp_path / "inv.yaml", local("b1", tmp_path))
    edited = tmp_path / "edited"
    shutil.copytree(bundles["cls"], edited)
    golden = edited / "golden.json"
    golden.write_text(golden.read_text().replace("1", "7", 1))
    common = ["--inventory", str(inventory), "--db", db]
    cases = [
        (["deploy", str(bundles["cls"]), "--board", "nosuch", *common], "unknown board 'nosuch'"),
        (["deploy", str(edited), "--board", "b1", *common], "golden.json"),
        (["deploy", "--board", "b1", *common], "BUNDLE is missing"),
        (["deploy", str(bundles["cls"]), "--rollback", "--board", "b1", *common], "--rollback takes no BUNDLE"),
        (["deploy", str(bundles["cls"]), "--board", "b1", "--canary", "2", *common], "--canary 2: only 1 --board"),
        (["deploy", "--rollback", "--board", "b1", *common], "no current release"),
        (["predict", str(page), "--board", "b1", *common], "no current release"),
        (["deploy", str(tmp_path / "nothing"), "--board", "b1", *common], "no such folder or file"),
    ]
    for argv, named in cases:
        assert main(argv) == 2, argv
        assert named in one_line_error(capsys.readouterr().err), argv
    assert not (tmp_path / "b1" / "deploy" / "releases").exists() or \
        os.listdir(tmp_path / "b1" / "deploy" / "releases") == []

    assert main(["deploy", str(bundles["cls"]), "--board", "b1", "--latency-factor", GENEROUS, *common]) == 0
    capsys.readouterr()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    assert main(["predict", str(not_an_image), "--board", "b1", *common]) == 2
    assert str(not_an_image) in one_line_error(capsys.readouterr().err)

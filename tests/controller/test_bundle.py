"""``edgefarm bundle``: the manifest and its id, ``open_bundle``'s refusals, and bundles built from a
real run (the ``ppocr_db`` fixture) that read the text of a page the test renders.

The fast tests build bundle folders by hand (``manifest.seal``); the slow ones go through the CLI as a
user does, on the three PaddleOCR models the fixture measured.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.build.cache import Cache
from controller.deploy import manifest as mf
from controller.deploy.bundler import ocr_preprocess, pipeline_of, version_range
from controller.errors import UserError
from tests.refusal import Case, assert_refused

OCR_MODELS = ("ppocr-det", "ppocr-rec", "ppocr-cls")


# --- fast: records, id, verification --------------------------------------------------------------


def _hand_made(folder: Path) -> mf.Manifest:
    """A small bundle folder: one raw model whose artifact is a few bytes, sealed as the bundler does."""
    (folder / "models" / "m").mkdir(parents=True)
    (folder / "models" / "m" / "0123456789abcdef.onnx").write_bytes(b"not really onnx")
    (folder / "golden").mkdir()
    (folder / "golden" / "0.npz").write_bytes(b"golden bytes")
    (folder / "golden.json").write_text('{"golden/0.npz": {}}\n')
    (folder / "bundle.pyz").write_bytes(b"#!/usr/bin/env python3\n")
    artifact = folder / "models" / "m" / "0123456789abcdef.onnx"
    body: dict[str, Any] = {
        "format": 1, "chip": "test chip", "edgefarm_version": "0.1.0", "pipeline": None,
        "requirements": {"python": ">=3.8", "numpy": ">=1.17", "image_decoder": None,
                         "engines": {"onnxruntime": version_range("1.20.1")}},
        "models": [{
            "name": "m", "task": "raw", "task_params": {"outputs": ["y"]}, "engine": "onnxruntime",
            "engine_version": "1.20.1", "variant": "fp32", "label": "fp32", "precision": "fp32", "options": {},
            "artifact": {"file": "models/m/0123456789abcdef.onnx",
                         "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                         "size_bytes": artifact.stat().st_size},
            "inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}], "preprocess": None,
            "measured": {"board": "local", "run_id": 1, "job_id": 2, "p50_ms": 1.5, "p90_ms": 2.0,
                         "accuracy_metric": "agreement", "accuracy": 1.0, "e2e_p50_ms": None},
        }],
        "golden": {"file": "golden.json", "inputs": ["golden/0.npz"]},
        "smoke": {"latency_factor": 3.0, "rounds": 5},
    }
    return mf.seal(folder, body)


def test_bundle_id_is_the_hash_of_the_canonical_manifest_without_it(tmp_path: Path) -> None:
    manifest = _hand_made(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["bundle_id"] == manifest.bundle_id
    without = {k: v for k, v in raw.items() if k != "bundle_id"}
    canonical = json.dumps(without, sort_keys=True, separators=(",", ":")).encode()
    assert manifest.bundle_id == hashlib.sha256(canonical).hexdigest()[:16]
    # Every file but the manifest is listed with its sha256.
    assert sorted(raw["files"]) == ["bundle.pyz", "golden.json", "golden/0.npz", "models/m/0123456789abcdef.onnx"]
    for rel, digest in raw["files"].items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == digest
    # A file's content is part of the id: another byte, another bundle.
    other = tmp_path.parent / "other"
    shutil.copytree(tmp_path, other)
    (other / "golden" / "0.npz").write_bytes(b"golden bytes!")
    assert mf.seal(other, without | {"files": {}}).bundle_id != manifest.bundle_id
    with mf.open_bundle(tmp_path) as opened:
        assert opened.manifest == manifest and opened.folder == tmp_path


def test_manifest_records_refuse_unknown_keys(tmp_path: Path) -> None:
    _hand_made(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["models"][0]["egnine"] = "onnxruntime"
    raw["bundle_id"] = mf.bundle_id_of(raw)
    (tmp_path / "manifest.json").write_text(mf.render(raw))
    with pytest.raises(UserError, match=r"models\.0\.egnine: unknown key"):
        mf.open_bundle(tmp_path)


@pytest.mark.parametrize("edit, needle", [
    (lambda d: (d / "golden" / "0.npz").write_bytes(b"edited"), "golden/0.npz: sha256 differs"),
    (lambda d: (d / "models" / "m" / "0123456789abcdef.onnx").unlink(), "models/m/0123456789abcdef.onnx is missing"),
    (lambda d: (d / "golden" / "1.npz").write_bytes(b"added"), "golden/1.npz was added"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace("test chip", "other chip")),
     "manifest.json: bundle_id"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is not JSON"),
    (lambda d: (d / "golden" / "1.npz").symlink_to(d / "golden" / "0.npz"), "golden/1.npz is not a plain file"),
], ids=["edited", "missing", "added", "manifest-edited", "manifest-broken", "link"])
def test_an_edited_bundle_is_refused_naming_the_file(tmp_path: Path, edit: Any, needle: str) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    _hand_made(folder)
    mf.open_bundle(folder)  # whole: accepted
    edit(folder)
    with pytest.raises(UserError) as err:
        mf.open_bundle(folder)
    line = str(err.value)
    assert needle in line and str(folder) in line and "\n" not in line


def test_what_the_runtime_writes_into_a_bundle_is_not_an_edit(tmp_path: Path) -> None:
    _hand_made(tmp_path)
    (tmp_path / "models" / "m" / "0123456789abcdef.onnx.d").mkdir()  # agent.artifacts.unpack_model's folder
    (tmp_path / "models" / "m" / "0123456789abcdef.onnx.d" / "model.xml").write_text("<net/>")
    mf.open_bundle(tmp_path)
    (tmp_path / "models" / "m" / "other.d").mkdir()
    (tmp_path / "models" / "m" / "other.d" / "x").write_text("x")
    with pytest.raises(UserError, match="other.d/x was added"):
        mf.open_bundle(tmp_path)


def test_archive_is_deterministic_and_opens_to_the_same_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    manifest = _hand_made(folder)
    mf.write_archive(folder, tmp_path / "1.tar.gz")
    os.utime(folder / "golden.json", (1e9, 1e9))  # a file's time never reaches the archive
    mf.write_archive(folder, tmp_path / "2.tar.gz")
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "1.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    assert {m.mode for m in members} <= {0o644, 0o755}
    with mf.open_bundle(tmp_path / "1.tar.gz") as opened:
        extracted = opened.folder
        assert opened.manifest.bundle_id == manifest.bundle_id
        assert (extracted / "golden" / "0.npz").read_bytes() == b"golden bytes"
    assert not extracted.exists()  # the temporary copy goes with the bundle


def _tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


@pytest.mark.parametrize("name, kind, needle", [
    ("../evil", tarfile.REGTYPE, "outside the bundle"),
    ("/etc/evil", tarfile.REGTYPE, "outside the bundle"),
    ("a/../../evil", tarfile.REGTYPE, "outside the bundle"),
    ("link", tarfile.SYMTYPE, "not a plain file"),
    ("hard", tarfile.LNKTYPE, "not a plain file"),
])
def test_an_archive_member_outside_the_bundle_or_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    name: str, kind: bytes, needle: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    info.linkname = "/etc/passwd" if kind != tarfile.REGTYPE else ""
    _tar(tmp_path / "b.tar.gz", [info])
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where open_bundle extracts
    with pytest.raises(UserError, match=needle):
        mf.open_bundle(tmp_path / "b.tar.gz")
    assert list(temp.iterdir()) == []  # nothing extracted, nothing left
    assert not (tmp_path.parent / "evil").exists()


def test_open_bundle_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder or file"):
        mf.open_bundle(tmp_path / "nothing")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="not a bundle folder or .tar.gz"):
        mf.open_bundle(tmp_path / "x.zip")
    (tmp_path / "x.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        mf.open_bundle(tmp_path / "x.tar.gz")
    with pytest.raises(UserError, match="manifest.json is missing"):
        mf.open_bundle(tmp_path)


def test_cache_finds_an_entry_by_content(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    a = cache.store("variants", "k1", ".onnx", b"aaaa", {})
    b = cache.store("datasets", "k2", ".npz", b"bbbbbb", {})
    assert cache.find(hashlib.sha256(b"aaaa").hexdigest(), 4) == a
    assert cache.find(hashlib.sha256(b"bbbbbb").hexdigest()) == b
    assert cache.find(hashlib.sha256(b"bbbbbb").hexdigest(), 4) is None  # the size filters before hashing
    assert cache.find(hashlib.sha256(b"cccc").hexdigest()) is None
    assert Cache(tmp_path / "none").find(hashlib.sha256(b"aaaa").hexdigest()) is None


def test_version_range_pipeline_and_ocr_declarations() -> None:
    assert version_range("1.20.1") == {"measured": "1.20.1", "min": "1.20", "below": "1.21"}
    assert version_range("2024.4.0-16579-c3152d32c9c-releases/2024/4")["below"] == "2024.5"
    with pytest.raises(UserError, match="not MAJOR.MINOR"):
        version_range("unknown")
    assert pipeline_of(["ocr-det", "ocr-rec"]) == "ocr"
    assert pipeline_of(["ocr-rec", "ocr-cls", "ocr-det"]) == "ocr"
    assert pipeline_of(["ocr-det", "ocr-cls"]) is None
    assert pipeline_of(["ocr-det", "ocr-rec", "classification"]) is None
    assert ocr_preprocess("ocr-det", [1, 3, 640, 480])["resize"] == [480, 640]
    line = ocr_preprocess("ocr-rec", [1, 3, 48, 320])
    assert (line["line"], line["pad"], line["color"], line["mean"]) == ([320, 48], 128, "bgr", [0.5, 0.5, 0.5])
    with pytest.raises(UserError, match="fixed size"):
        ocr_preprocess("ocr-rec", [1, 3, 48, None])


@pytest.mark.parametrize("argv, needle", [
    (["--engine", "onnxruntime"], "--engine needs --variant"),
    (["--variant", "int8"], "--variant needs --engine"),
    (["--engine", "onnxruntime", "--variant", "int8", "--model", "b"], "overrides the selection for one model"),
    (["--model", "a"], "--model a is given twice"),
])
def test_flags_that_contradict_are_refused_before_the_database(tmp_path: Path, argv: list[str], needle: str) -> None:
    case = Case("flags", ("bundle", "--chip", "c", "--model", "a", *argv, "--out", str(tmp_path / "out"),
                          "--db", f"sqlite:///{tmp_path / 'none.db'}"), (needle,))
    assert_refused(case, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- slow: bundles of a real run --------------------------------------------------------------------


def _chip(db: str, cwd: Path) -> str:
    """The chip the run measured, as `edgefarm select --format json` names it."""
    from tests.refusal import edgefarm

    proc = edgefarm(["select", "--format", "json", "--db", db], cwd)
    assert proc.returncode == 0, proc.stderr
    chips = {r["chip"] for r in json.loads(proc.stdout)}
    assert len(chips) == 1
    return chips.pop()


def _bundle(db: str, chip: str, out: Path, *models: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    from tests.refusal import edgefarm

    argv = ["bundle", "--chip", chip, *(a for m in models for a in ("--model", m)), *extra, "--out", str(out),
            "--db", db]
    proc = edgefarm(argv, out.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def ocr_bundles(ppocr_db: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, Path]:
    """The three OCR models bundled twice as folders (--model in two orders) and once as .tar.gz."""
    tmp = tmp_path_factory.mktemp("bundles")
    chip = _chip(ppocr_db, tmp)
    first, second, archive = tmp / "b1", tmp / "b2", tmp / "b.tar.gz"
    proc = _bundle(ppocr_db, chip, first, *OCR_MODELS)
    assert str(first) in proc.stdout and "edgefarm deploy" in proc.stdout and "bundle.pyz predict" in proc.stdout
    _bundle(ppocr_db, chip, second, *reversed(OCR_MODELS))
    _bundle(ppocr_db, chip, archive, *OCR_MODELS)
    return chip, first, second, archive


def test_ocr_bundle_of_a_real_run(ocr_bundles: tuple[str, Path, Path, Path], ppocr_db: str) -> None:
    chip, first, second, archive = ocr_bundles
    raw = json.loads((first / "manifest.json").read_text())
    assert set(raw) == {"format", "bundle_id", "chip", "edgefarm_version", "pipeline", "requirements", "models",
                        "golden", "smoke", "files"}
    assert raw["chip"] == chip and raw["pipeline"] == "ocr" and raw["format"] == 1
    assert sorted(m["name"] for m in raw["models"]) == sorted(OCR_MODELS)
    for rel, digest in raw["files"].items():
        assert hashlib.sha256((first / rel).read_bytes()).hexdigest() == digest, rel
    on_disk = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert on_disk == sorted([*raw["files"], "manifest.json"])  # nothing else: no unpacked model, no temp file
    assert sorted(p.name for p in first.parent.iterdir()) == ["b.tar.gz", "b1", "b2"]  # no temporary folder left
    # The selection's configuration, with the job's own figures.
    from controller.results.database import open_db
    from controller.results.selection import selections

    with open_db(ppocr_db, create=False)() as session:
        best = {s.model: s.best for s in selections(session, 0.01)}
    for m in raw["models"]:
        c = best[m["name"]]
        assert c is not None
        assert (m["engine"], m["label"], m["measured"]["job_id"], m["measured"]["p50_ms"]) == \
            (c.engine, c.variant, c.job_id, c.p50_ms)
        assert m["artifact"]["file"] == f"models/{m['name']}/{m['artifact']['sha256'][:16]}" + \
            Path(m["artifact"]["file"]).suffix
        assert m["preprocess"]["color"] == "bgr"
        assert raw["requirements"]["engines"][m["engine"]]["measured"] == m["engine_version"]
    rec = next(m for m in raw["models"] if m["task"] == "ocr-rec")
    assert len(rec["task_params"]["charset"]) > 1000 and "A" in rec["task_params"]["charset"]
    # Golden inputs: 3 pages, and the texts the bundle reads on them.
    assert raw["golden"] == {"file": "golden.json", "inputs": ["golden/0.png", "golden/1.png", "golden/2.png"]}
    from PIL import Image

    with Image.open(first / "golden" / "0.png") as page:
        det = next(m for m in raw["models"] if m["task"] == "ocr-det")
        assert list(page.size) == det["preprocess"]["resize"]
    expected = json.loads((first / "golden.json").read_text())
    assert all(expected[k]["lines"] and all(line["text"] for line in expected[k]["lines"]) for k in expected)
    assert "timing_ms" not in json.dumps(expected)
    # Deterministic: the same rows and cache, the same bundle (whatever order --model came in), also as .tar.gz.
    assert json.loads((second / "manifest.json").read_text())["bundle_id"] == raw["bundle_id"]
    with mf.open_bundle(archive) as opened:
        assert opened.manifest.bundle_id == raw["bundle_id"]
    assert mf.open_bundle(first).manifest.bundle_id == raw["bundle_id"]


ALPHABET_SEED = 17


def _page(path: Path) -> list[str]:
    """A white page with three lines of ALPHABET letters in DejaVu Sans; returns the lines."""
    from PIL import Image, ImageDraw, ImageFont

    from controller.data.ocr_render import ALPHABET, FONT_DIR

    # Letters whose capital is the small one drawn bigger (c/C, s/S...), or nearly (j/J), are left out: on a
    # line alone no reader tells them apart, and the farm's 0.96 exact match already counts those misreadings.
    letters = [c for c in ALPHABET if c.lower() not in "cjksopuvwxz"]
    rng = np.random.default_rng(ALPHABET_SEED)
    lines = ["".join(letters[i] for i in rng.integers(0, len(letters), size=n)) for n in (9, 7, 11)]
    img = Image.new("RGB", (900, 420), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), 44)
    for k, text in enumerate(lines):
        draw.text((50 + 30 * k, 40 + 130 * k), text, font=font, fill=(20, 20, 20))
    img.save(path)
    return lines


def test_bundle_reads_the_text_of_a_rendered_page(ocr_bundles: tuple[str, Path, Path, Path], tmp_path: Path) -> None:
    """A bundle built from a real run reads, on a page it never saw, the lines the farm's accuracy run
    scored the same models on (text rendered the same way: DejaVu, ALPHABET)."""
    _, first, _, _ = ocr_bundles
    lines = _page(tmp_path / "page.png")
    proc = subprocess.run([sys.executable, str(first / "bundle.pyz"), "predict", str(tmp_path / "page.png"), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [line["text"] for line in result["lines"]] == lines
    assert set(result["timing_ms"]) >= {"decode", "preprocess", "infer", "postprocess", "total"}
    for line in result["lines"]:  # corner points in the page's pixels
        assert len(line["box"]) == 4 and all(0 <= x <= 900 and 0 <= y <= 420 for x, y in line["box"])
    mf.open_bundle(first)  # running it left the bundle whole


def test_engine_and_variant_pick_that_job(ppocr_db: str, tmp_path: Path) -> None:
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates

    chip = _chip(ppocr_db, tmp_path)
    with open_db(ppocr_db, create=False)() as session:
        job = next(c for c in latest_candidates(session)
                   if c.model == "ppocr-rec" and c.engine == "onnxruntime" and c.variant == "int8")
    out = tmp_path / "rec"
    proc = _bundle(ppocr_db, chip, out, "ppocr-rec", extra=("--engine", "onnxruntime", "--variant", "int8"))
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["pipeline"] is None and len(raw["models"]) == 1
    (m,) = raw["models"]
    assert (m["engine"], m["label"], m["measured"]["job_id"], m["measured"]["run_id"]) == \
        ("onnxruntime", "int8", job.job_id, job.run_id)
    assert m["artifact"]["file"].endswith(".onnx") and m["preprocess"]["line"] == [320, 48]
    assert raw["requirements"]["engines"] == {"onnxruntime": version_range(job.engine_version)}
    assert f"onnxruntime int8 ({job.engine_version})" in proc.stdout
    # One model: 3 samples of its evaluation set (text lines), and the text it reads on them.
    expected = json.loads((out / "golden.json").read_text())
    assert sorted(expected) == ["golden/0.png", "golden/1.png", "golden/2.png"]
    assert all(set(r) == {"text", "score"} and r["text"] for r in expected.values())


def _no_selection_db(ppocr_db: str, tmp_path: Path) -> str:
    """A copy of the run's database where ppocr-det's fp32 accuracy was not measured: no reference,
    so no configuration of it is within any budget."""
    path = tmp_path / "nosel.db"
    shutil.copyfile(ppocr_db.removeprefix("sqlite:///"), path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE results SET accuracy = NULL WHERE job_id IN (SELECT j.id FROM jobs j JOIN variants v "
                    "ON v.id = j.variant_id JOIN models m ON m.id = v.model_id WHERE m.name = 'ppocr-det' "
                    "AND j.label = 'fp32')")
    return f"sqlite:///{path}"


def test_bad_input_is_one_line_and_writes_nothing(ppocr_db: str, tmp_path: Path) -> None:
    chip = _chip(ppocr_db, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "taken").mkdir()
    nosel = _no_selection_db(ppocr_db, tmp_path)
    cases = [
        Case("unknown-chip", ("--chip", "no such chip", "--model", "ppocr-det"), ("'no such chip'", repr(chip))),
        Case("unknown-model", ("--chip", chip, "--model", "ppocr-xyz"), ("ppocr-xyz", "ppocr-det, ppocr-rec")),
        Case("no-selection", ("--chip", chip, "--model", "ppocr-det", "--db", nosel),
             ("nothing within the accuracy budget 0.01", "nearest: ", "p50")),
        Case("not-measured", ("--chip", chip, "--model", "ppocr-det", "--engine", "onnxruntime", "--variant", "int4"),
             ("--engine onnxruntime --variant int4", "measured: ", "onnxruntime int8")),
        Case("out-exists", ("--chip", chip, "--model", "ppocr-det", "--out", str(work / "taken")),
             ("exists already", "taken")),
        Case("out-folder", ("--chip", chip, "--model", "ppocr-det", "--out", str(work / "no" / "b")),
             ("does not exist",)),
    ]
    for case in cases:
        argv = case.argv if "--out" in case.argv else (*case.argv, "--out", str(work / "b"))
        argv = argv if "--db" in argv else (*argv, "--db", ppocr_db)
        assert_refused(Case(case.id, ("bundle", *argv), case.needles), work)
        assert sorted(p.name for p in work.iterdir()) == ["taken"], case.id
        assert list((work / "taken").iterdir()) == []
    # A missing artifact: the cache of another machine.
    case = Case("no-artifact", ("bundle", "--chip", chip, "--model", "ppocr-det", "--out", str(work / "b"),
                                "--db", ppocr_db), ("is not in the cache", "edgefarm run"),
                env={"EDGEFARM_HOME": str(tmp_path / "elsewhere")})
    assert_refused(case, work)
    assert sorted(p.name for p in work.iterdir()) == ["taken"]


def test_an_edited_bundle_of_a_real_run_is_refused(ocr_bundles: tuple[str, Path, Path, Path]) -> None:
    _, first, _, _ = ocr_bundles
    edited = first.parent / "edited"
    shutil.copytree(first, edited)
    rec = next(m for m in json.loads((edited / "manifest.json").read_text())["models"] if m["name"] == "ppocr-rec")
    artifact = edited / rec["artifact"]["file"]
    data = artifact.read_bytes()
    artifact.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # one bit of the first byte (a tar ends in zeros)
    with pytest.raises(UserError) as err:
        mf.open_bundle(edited)
    assert f"bundle {edited}: models/ppocr-rec/{artifact.name}: sha256 differs" in str(err.value)


ANGLE_TASK = (
    "import numpy as np\n"
    "METRIC = 'angle_ok'\n"
    "ANGLES = [0, 90, 180, 270]\n"
    "def postprocess(outputs):\n"
    "    return ANGLES[int(np.asarray(outputs[0]).reshape(-1).argmax())]\n"
    "def metric(predictions, labels):\n"
    "    return {'angle_ok': sum(p == int(t) for p, t in zip(predictions, labels)) / len(labels)}\n"
)


@pytest.mark.slow
def test_bundle_of_a_classifier_and_a_task_of_the_users_own(tmp_path: Path, edgefarm_home: Path) -> None:
    """Two unrelated models of a run on the user's own images (the tasks issue's examples): one bundle
    that answers per model, the user's task module inside it, and the pages' angles read right."""
    import yaml

    from controller.data import composed
    from tests.models import orientation_model
    from tests.refusal import edgefarm

    data = composed.orientation_folder(tmp_path / "pages", 6, seed=3)
    labels = composed.write_labels(tmp_path / "labels.txt", composed.ORIENTATION_LABELS)
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "angle_task.py").write_text(ANGLE_TASK)
    preprocess = {"resize_short": 256, "crop": 224, "color": "bgr", "interpolation": "lanczos",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    spec = {"name": "own-bundle", "variants": ["fp32"], "engines": ["onnxruntime"],
            "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.1, "max_seconds": 10,
                        "batch_sizes": [1], "throughput_seconds": 0.1},
            "models": [{"name": "orientation", "path": str(orientation_model()), "task": "classification",
                        "labels": str(labels), "preprocess": preprocess, "dataset": {"path": str(data), "samples": 8}},
                       {"name": "angle", "path": str(orientation_model()), "task": "angle_task.py",  # beside the spec
                        "preprocess": preprocess, "dataset": {"path": str(data), "samples": 8}}]}
    (tmp_path / "spec" / "own.yaml").write_text(yaml.safe_dump(spec))
    db = f"sqlite:///{tmp_path / 'own.db'}"
    run = edgefarm(["run", str(tmp_path / "spec" / "own.yaml"), "--db", db], tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr
    chip = _chip(db, tmp_path)
    out = tmp_path / "bundle"
    _bundle(db, chip, out, "orientation", "angle")
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["pipeline"] is None and raw["requirements"]["image_decoder"] == "Pillow"
    by_name = {m["name"]: m for m in raw["models"]}
    assert by_name["orientation"]["task"] == "classification"
    assert by_name["orientation"]["task_params"]["classes"] == composed.ORIENTATION_LABELS
    assert by_name["orientation"]["preprocess"]["crop"] == [224, 224]
    own = by_name["angle"]
    assert own["task"] == "custom" and own["task_params"]["module_path"] == "models/angle/task.py"
    assert (out / "models" / "angle" / "task.py").read_text() == ANGLE_TASK
    assert raw["files"]["models/angle/task.py"] == hashlib.sha256(ANGLE_TASK.encode()).hexdigest()
    # Golden inputs: 3 of the classifier's evaluation images, as the model saw them (224 x 224, RGB).
    from PIL import Image

    with Image.open(out / "golden" / "0.png") as img:
        assert img.size == (224, 224) and img.mode == "RGB"
    expected = json.loads((out / "golden.json").read_text())
    assert len(expected) == 3 and all(set(r["models"]) == {"orientation", "angle"} for r in expected.values())
    # Pages the run never saw, one at each angle: both models read the angle.
    fresh = composed.orientation_folder(tmp_path / "fresh", 1, seed=99)
    pages = sorted(fresh.glob("*/page-0000.*"))
    proc = subprocess.run([sys.executable, str(out / "bundle.pyz"), "predict", *map(str, pages), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for page, result in zip(pages, results):
        angle = page.parent.name
        assert result["models"]["orientation"]["top"][0]["label"] == angle, (page, result)
        assert result["models"]["angle"]["prediction"] == int(angle), (page, result)
    mf.open_bundle(out)  # the module's bytecode cache, if any, is not an edit

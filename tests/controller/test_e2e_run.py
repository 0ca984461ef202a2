"""End-to-end figures on the controller: the OCR datasets' preprocessing declaration, the images
artifact (a user's own files, rendered pages), the result check of the e2e block, and the e2e p50
of real runs in the selection table."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.dataset import _to_tensor, load_dataset
from agent.protocol import new_result
from agent.tasks.preprocess import decode_image, geometry
from controller.boards.result_check import check_result
from controller.build.cache import Cache
from controller.build.e2e_images import E2E_IMAGES, images_artifact, pack, rendered_files
from controller.data import datasets
from tests.conftest import small_ppocr_spec
from tests.models import ocr_model, orientation_model

KINDS = {"ocr-det": ((1, 3, 640, 640), datasets.DET_NORMALIZE), "ocr-rec": ((1, 3, 48, 320), datasets.LINE_NORMALIZE),
         "ocr-cls": ((1, 3, 48, 192), datasets.LINE_NORMALIZE)}


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(str(arrays.pop("__meta__"))), arrays


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ocr_datasets_declare_preprocessing_and_feed_the_same_tensors(tmp_path: Path, kind: str) -> None:
    shape, normalize = KINDS[kind]
    path = tmp_path / f"{kind}.npz"
    datasets.make_dataset(kind, {"x": (shape, "float32")}, 3, 5, path, model_path=ocr_model("rec"))
    meta, arrays = _read(path)
    decl = meta["inputs"]["x"]["preprocess"]
    assert "normalize" not in meta["inputs"]["x"] and meta["source"]["dataset_version"] == datasets.DATASET_VERSION
    geometry_key = "resize" if kind == "ocr-det" else "line"
    assert decl[geometry_key] == [shape[3], shape[2]] and decl["color"] == "bgr" and decl["layout"] == "nchw"
    # The tensors the old ``normalize`` entry made, bit for bit.
    old = _to_tensor(arrays["input:x"], normalize, "x")
    new = load_dataset(str(path)).batch([0, 1, 2])["x"]
    assert new.dtype == old.dtype == np.float32 and np.array_equal(new, old)
    # A file written before (``normalize``, no declaration) still reads, to the same tensors.
    meta["inputs"] = {"x": {"normalize": normalize}}
    datasets.write_npz(tmp_path / "old.npz", meta, arrays)
    assert np.array_equal(load_dataset(str(tmp_path / "old.npz")).batch([0, 1, 2])["x"], old)


def test_a_rendered_line_through_its_declaration_is_the_stored_line(tmp_path: Path) -> None:
    """The declaration is the one the runtime applies to an image file: a stored line, as a PNG, comes
    out of decode + geometry as the same pixels."""
    path = tmp_path / "rec.npz"
    datasets.make_dataset("ocr-rec", {"x": ((1, 3, 48, 320), "float32")}, 2, 0, path, model_path=ocr_model("rec"))
    meta, arrays = _read(path)
    for k, (name, png) in enumerate(rendered_files(path)):
        assert name == f"{k:02d}.png"
        image, _ = geometry(decode_image(png), meta["inputs"]["x"]["preprocess"])
        assert np.array_equal(image, arrays["input:x"][k])


def test_rendered_pages_and_a_deterministic_tar(tmp_path: Path) -> None:
    path = tmp_path / "det.npz"
    datasets.make_dataset("ocr-det", {"x": ((1, 3, 640, 640), "float32")}, 10, 0, path)
    _meta, arrays = _read(path)
    files = rendered_files(path)
    assert [n for n, _ in files] == [f"{k:02d}.png" for k in range(E2E_IMAGES)]
    for k, (_name, data) in enumerate(files):  # the stored NCHW BGR page, as RGB pixels
        assert np.array_equal(decode_image(data), arrays["input:x"][k].transpose(1, 2, 0)[:, :, ::-1])
    blob = pack(list(reversed(files)))
    assert blob == pack(files)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(n for n, _ in files)
    assert all(m.isfile() and m.mtime == 0 and m.mode == 0o644 and m.uid == 0 and m.uname == "" for m in members)

    cache = Cache(tmp_path / "cache")
    first = images_artifact(None, None, "ocr-det", path, "sha-of-the-set", None, cache)  # type: ignore[arg-type]
    assert first is not None and first[0].read_bytes() == blob
    assert images_artifact(None, None, "ocr-det", path, "sha-of-the-set", None, cache) == first  # type: ignore[arg-type]
    assert images_artifact(None, None, "raw", path, "sha-of-the-set", None, cache) is None  # type: ignore[arg-type]


def test_a_users_images_are_its_first_evaluation_files_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tar holds the original files (size and format) of the evaluation split, in its order: each
    member, decoded and preprocessed, is the evaluation dataset's sample of the same index."""
    from PIL import Image

    from controller.build.source import prepare
    from controller.config.spec import load_spec
    from controller.run.checks import check_datasets

    monkeypatch.setenv("EDGEFARM_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (300, 500), (1200, 900)]
    for c in ("0", "90", "180", "270"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            w, h = sizes[i % 3]
            img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
            img.save(tmp_path / "data" / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "classification.yaml").read_text())
    spec["models"][0]["path"] = str(orientation_model())
    spec["models"][0]["labels"] = None
    spec["models"][0]["dataset"] = {"path": "data", "samples": 10, "seed": 3}
    spec["quantization"]["samples"] = 4
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "spec.yaml")
    cache = Cache(tmp_path / "cache")
    m = loaded.spec.models[0]
    prepared = {m.name: prepare(m.resolve_path(loaded.base), m.name, {n: i.shape for n, i in m.inputs.items()},
                                tmp_path / "source.onnx")}
    user = check_datasets(loaded, prepared, cache)[m.name]
    found = images_artifact(loaded, m, user.setup.task, user.evaluation, "unused", user, cache)
    assert found is not None
    with tarfile.open(found[0]) as tar:
        members = [(i.name, tar.extractfile(i).read()) for i in tar.getmembers()]  # type: ignore[union-attr]
    assert len(members) == E2E_IMAGES  # 16 images: 4 calibrate, 10 at most evaluate, the first 8 go
    originals = {p.read_bytes(): p for p in (tmp_path / "data").rglob("*.*")}
    stored = load_dataset(str(user.evaluation)).raw(user.setup.input_name)
    for k, (name, data) in enumerate(members):
        assert data in originals and name == f"{k:02d}{originals[data].suffix}"  # the file itself
        image, _ = geometry(decode_image(data), user.setup.preprocess)
        assert np.array_equal(image, stored[k])  # evaluation sample k


def _ok_result(e2e: object) -> dict:
    record = dict(new_result("job-1"))
    record.update(engine={"name": "onnxruntime", "version": "1", "precision": "fp32", "device": "CPU"},
                  phases={"load_ms": 1.0, "first_inference_ms": 1.0},
                  latency={"samples_ms": [1.0], "p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "std": 0.0,
                           "min": 1.0, "max": 1.0, "n": 1, "cv": 0.0}, e2e=e2e)
    return record


GOOD = {"p50_ms": 3.5, "p90_ms": 4.0, "n": 64, "images": 8, "stopped_by": "target",
        "stages_p50_ms": {"decode": 1.0, "preprocess": 0.5, "infer": 1.9, "postprocess": 0.1}}


@pytest.mark.parametrize("e2e,problem", [
    (GOOD, None),
    ({"error": "cannot identify image file"}, None),
    ({**GOOD, "p50_ms": None}, "'p50_ms'"),
    ({k: v for k, v in GOOD.items() if k != "stages_p50_ms"}, "'stages_p50_ms'"),
    ({**GOOD, "stages_p50_ms": {"decode": 1.0, "infer": 1.0, "preprocess": 1.0}}, "e2e.stages_p50_ms.postprocess"),
    ({**GOOD, "p90_ms": -1.0}, "e2e.p90_ms"),
    ({**GOOD, "n": 0}, "e2e.n"),
    ({**GOOD, "p50_ms": "fast"}, "e2e.p50_ms"),
    ({"error": 3}, "e2e.error"),
])
def test_the_e2e_block_is_checked(e2e: object, problem: str | None) -> None:
    checked = check_result(_ok_result(e2e), "job-1")
    if problem is None:
        assert checked["status"] == "ok" and checked["e2e"] == e2e
    else:
        assert checked["status"] == "failed" and checked["failure"]["stage"] == "result"
        assert problem in checked["failure"]["message"]


def test_select_shows_the_e2e_p50_beside_the_engines(ppocr_db: str) -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from controller.cli import main
    from controller.results.selection import latest_candidates, render, select_best
    from controller.results.store import Result

    with Session(create_engine(ppocr_db)) as session:
        cands = latest_candidates(session)
        raws = {r.job_id: r.raw for r in session.scalars(select(Result))}
    assert cands
    for c in cands:
        e2e = raws[c.job_id]["e2e"]
        assert "error" not in e2e, (c.model, c.engine, c.variant, e2e)
        assert c.e2e_p50_ms == pytest.approx(e2e["p50_ms"]) and e2e["images"] == 8
        assert e2e["n"] >= 64 or e2e["stopped_by"] == "max_seconds"  # the spec's max_seconds bounds it too
        # The application's call holds the engine's: decoding an image file and the task's steps add to it.
        assert c.e2e_p50_ms > 0.5 * c.p50_ms and e2e["stages_p50_ms"]["decode"] > 0
    sels = select_best(cands, 0.05)
    records = json.loads(render(sels, "json"))
    picked = [r for r in records if r.get("engine")]
    assert picked and all(isinstance(r["e2e_p50_ms"], float) for r in picked)
    assert list(picked[0]).index("e2e_p50_ms") == list(picked[0]).index("p50_ms") + 1
    header = render(sels, "table").splitlines()[0].split()
    assert header[header.index("p50_ms") + 1] == "e2e_p50_ms"
    assert main(["select", "--db", ppocr_db, "--budget", "0.05"]) == 0


@pytest.mark.slow
def test_a_run_with_measure_e2e_false_has_no_e2e_block(tmp_path: Path, edgefarm_home: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from controller.cli import main
    from controller.results.selection import latest_candidates
    from controller.results.store import Result

    path = small_ppocr_spec(tmp_path, name="no-e2e", e2e=False)
    spec = yaml.safe_load(path.read_text())
    spec["models"] = [m for m in spec["models"] if m["name"] == "ppocr-cls"]
    spec["engines"], spec["variants"] = ["onnxruntime"], ["fp32"]
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'edgefarm.db'}"
    assert main(["run", str(path), "--db", url]) == 0
    with Session(create_engine(url)) as session:
        raws = [r.raw for r in session.scalars(select(Result))]
        cands = latest_candidates(session)
    assert raws and all("e2e" not in raw and raw["accuracy"]["samples"] == 24 for raw in raws)
    assert cands and all(c.e2e_p50_ms is None for c in cands)
    capsys.readouterr()
    assert main(["select", "--db", url]) == 0
    assert "e2e_p50_ms" in capsys.readouterr().out  # the column is there, with a dash

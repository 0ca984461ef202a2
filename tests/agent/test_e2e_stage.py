"""The job's e2e stage: image files decoded, preprocessed, inferred and postprocessed by the
deployment runtime on a real model (PaddleOCR's direction classifier) and its rendered dataset."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from agent.job import run_job
from controller.boards.result_check import check_result
from controller.build.e2e_images import pack, rendered_files
from controller.data import datasets
from tests.agent.conftest import cls_model_path, sha256

CLS = {"x": ((1, 3, 48, 192), "float32")}
MEASURE = {"warmup": 2, "min_iterations": 16, "min_seconds": 0.1, "max_seconds": 30.0,
           "batch_sizes": [1], "throughput_seconds": 0.1}


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    """A photo-sized JPEG: smooth gradients plus noise, so it neither compresses to nothing nor decodes
    in no time."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], axis=-1)
    noisy = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cls-data") / "dataset.npz"
    datasets.make_dataset("ocr-cls", CLS, 8, 0, path)
    return path


def _job(workdir: Path, dataset: Path, images: List[Tuple[str, bytes]] | None,
         measure: Dict[str, Any] | None = None) -> Dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cls_model_path(), workdir / "model.onnx")
    shutil.copyfile(dataset, workdir / "dataset.npz")
    artifacts: Dict[str, Any] = {role: {"file": name, "sha256": sha256(workdir / name)}
                                 for role, name in (("model", "model.onnx"), ("dataset", "dataset.npz"))}
    if images is not None:
        (workdir / "images.tar").write_bytes(pack(images))
        artifacts["images"] = {"file": "images.tar", "sha256": sha256(workdir / "images.tar")}
    return {"protocol": 1, "job_id": "e2e-%s" % workdir.name, "engine": {"name": "onnxruntime", "options": {"threads": 1}},
            "artifacts": artifacts, "measure": dict(measure or MEASURE)}


def _checked(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result as the controller takes it: through its schema check, JSON and back."""
    record = json.loads(json.dumps(result))
    checked = check_result(record, record["job_id"])
    assert checked["status"] == "ok", checked["failure"]
    return dict(checked)


def test_e2e_runs_the_runtime_on_image_files(tmp_path: Path, cls_data: Path) -> None:
    images = rendered_files(cls_data)
    result = _checked(run_job(_job(tmp_path / "job", cls_data, images), str(tmp_path / "job")))
    e2e = result["e2e"]
    assert "error" not in e2e, e2e
    assert e2e["images"] == len(images) == 8
    assert e2e["n"] >= MEASURE["min_iterations"] and e2e["stopped_by"] == "target"
    stages = e2e["stages_p50_ms"]
    assert set(stages) == {"decode", "preprocess", "infer", "postprocess"}
    assert all(v > 0 for v in stages.values()), stages
    # Each call's wall time holds its stages: its median is at least nearly the stages' medians summed.
    assert e2e["p50_ms"] >= 0.8 * sum(stages.values())
    assert e2e["p90_ms"] >= e2e["p50_ms"]
    # The runtime's inference is this engine running this model: the same order as the engine-only p50.
    assert 0.2 * result["latency"]["p50"] <= stages["infer"] <= 5 * result["latency"]["p50"]
    assert result["accuracy"]["samples"] == 8  # the accuracy stage ran before, on the same engine


def test_decoding_a_photo_sized_jpeg_costs_more_than_a_small_png(tmp_path: Path, cls_data: Path) -> None:
    small = [("00.png", _png(np.full((48, 192, 3), 200, dtype=np.uint8)))]
    large = [("00.jpg", _jpeg(3000, 2000))]
    e2e_small = _checked(run_job(_job(tmp_path / "small", cls_data, small), str(tmp_path / "small")))["e2e"]
    e2e_large = _checked(run_job(_job(tmp_path / "large", cls_data, large), str(tmp_path / "large")))["e2e"]
    assert e2e_small["stages_p50_ms"]["decode"] > 0
    # A 6-megapixel JPEG takes tens of ms to decode and to shrink; a 48x192 PNG well under one.
    assert e2e_large["stages_p50_ms"]["decode"] > 10 * e2e_small["stages_p50_ms"]["decode"]
    assert e2e_large["stages_p50_ms"]["preprocess"] > e2e_small["stages_p50_ms"]["preprocess"]
    assert e2e_large["p50_ms"] > e2e_small["p50_ms"]
    # The engine's own figure knows nothing of the file it came from.
    assert e2e_large["stages_p50_ms"]["infer"] < e2e_large["p50_ms"] / 2


def test_a_failing_e2e_stage_keeps_the_engine_figures(tmp_path: Path, cls_data: Path) -> None:
    result = _checked(run_job(_job(tmp_path / "bad", cls_data, [("00.png", b"not an image")]), str(tmp_path / "bad")))
    assert result["latency"]["n"] >= MEASURE["min_iterations"] and result["accuracy"]["samples"] == 8
    assert set(result["e2e"]) == {"error"} and "cannot identify image file" in result["e2e"]["error"]


def test_a_dataset_without_a_preprocess_declaration_is_an_e2e_error(tmp_path: Path, cls_data: Path) -> None:
    """A dataset file of an earlier version (``normalize``, no declaration) still measures and scores."""
    with np.load(cls_data, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    meta["inputs"] = {"x": {"normalize": datasets.LINE_NORMALIZE}}
    old = tmp_path / "old.npz"
    datasets.write_npz(old, meta, arrays)
    result = _checked(run_job(_job(tmp_path / "old", old, rendered_files(cls_data)[:2]), str(tmp_path / "old")))
    assert result["accuracy"]["samples"] == 8
    assert "preprocess declaration" in result["e2e"]["error"]


def test_no_images_artifact_no_e2e_block(tmp_path: Path, cls_data: Path) -> None:
    result = _checked(run_job(_job(tmp_path / "none", cls_data, None), str(tmp_path / "none")))
    assert "e2e" not in result


def test_images_tar_members_must_be_plain_files(tmp_path: Path, cls_data: Path) -> None:
    job = _job(tmp_path / "evil", cls_data, [("00.png", b"x")])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "evil" / "images.tar").write_bytes(buf.getvalue())
    job["artifacts"]["images"]["sha256"] = sha256(tmp_path / "evil" / "images.tar")
    result = _checked(run_job(job, str(tmp_path / "evil")))
    assert "not a plain file name" in result["e2e"]["error"]
    assert not (tmp_path / "escape.png").exists()

